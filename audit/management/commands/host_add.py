from audit.cli import audited
from hostjobs.management.commands.host_add import Command as HostAdd
from hostjobs.models import Host

Command = audited(HostAdd, "host.create", lambda o: Host.objects.filter(name=o["name"]).first(), object_type="host")
