from pathlib import Path

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from audit.cli import audited
from hostjobs.models import Host
from sealing import service
from templates.api import TemplateSerializer
from templates.models import Template


class TemplateCreate(BaseCommand):
    help = "Create a template from a shut-off VM (optionally sealed); --follow waits for the result."

    def add_arguments(self, parser):
        parser.add_argument("--host", required=True, help="host name or id")
        parser.add_argument("--vm", required=True)
        parser.add_argument("--name", required=True)
        parser.add_argument("--description", default="")
        parser.add_argument("--seal", action="store_true")
        parser.add_argument("--hostname")
        parser.add_argument("--timezone")
        parser.add_argument("--root-password-file", help="a file holding the root password (not an argument)")
        parser.add_argument("--ssh-key", action="append", default=[], metavar="USER:KEYFILE")
        parser.add_argument("--firstboot", action="append", default=[], metavar="COMMAND")
        parser.add_argument("--ops-add", default="", help="comma-separated virt-sysprep operations")
        parser.add_argument("--ops-remove", default="")
        parser.add_argument("--follow", action="store_true", help="follow the job; exit status is its outcome")

    def handle(self, *args, **o):
        host = Host.objects.filter(name=o["host"]).first() or (
            Host.objects.filter(pk=o["host"]).first() if o["host"].isdigit() else None)
        if host is None:
            raise CommandError(f"no host {o['host']!r}")
        opts = {k: v for k, v in {
            "hostname": o["hostname"], "timezone": o["timezone"],
            "operations_add": [x for x in o["ops_add"].split(",") if x],
            "operations_remove": [x for x in o["ops_remove"].split(",") if x],
            "firstboot_commands": o["firstboot"],
        }.items() if v}
        if o["root_password_file"]:
            opts["root_password"] = Path(o["root_password_file"]).read_text().rstrip("\n")
        if o["ssh_key"]:
            keys = []
            for spec in o["ssh_key"]:
                user, _, path = spec.partition(":")
                keys.append({"user": user, "key": Path(path).read_text().strip()})
            opts["ssh_keys"] = keys
        data = {"name": o["name"], "description": o["description"], "host": host.pk, "vm": o["vm"],
                "seal": o["seal"]}
        if opts:
            data["seal_options"] = opts
        ser = TemplateSerializer(data=data)
        if not ser.is_valid():
            raise CommandError(_errors(ser.errors))
        try:
            op = service.start(Template(**ser.validated_data))
        except service.Refused as e:
            raise CommandError(f"{e.field}: {e.message}") from None
        self.stdout.write(f"job {op.pk} (template {o['name']!r})")
        if o["follow"]:
            call_command("job_follow", str(op.pk), stdout=self.stdout)


# Recorded in the audit trail as template.create (source cli, the OS user), accepted or refused.
Command = audited(TemplateCreate, "template.create", lambda o: Template.objects.filter(name=o["name"]).first(),
                  object_type="template")


def _errors(errors, prefix=""):
    parts = []
    for k, v in errors.items():
        if isinstance(v, dict):
            parts.append(_errors(v, f"{prefix}{k}."))
        else:
            parts.append(f"{prefix}{k}: {' '.join(map(str, v))}")
    return "; ".join(parts)
