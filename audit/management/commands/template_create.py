from audit.cli import audited
from sealing.management.commands.template_create import Command as TemplateCreate
from templates.models import Template

Command = audited(TemplateCreate, "template.create", lambda o: Template.objects.filter(name=o["name"]).first(),
                  object_type="template")
