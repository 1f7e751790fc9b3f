from pathlib import Path

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from audit.cli import audited
from hostjobs.models import Host
from sealing.management.commands.template_create import _errors
from sealing.service import Refused
from templates.models import Template
from vms import service
from vms.api import VmSerializer
from vms.models import Vm


class VmCreate(BaseCommand):
    help = "Make a VM from a template (thin by default); --follow waits for the result."

    def add_arguments(self, parser):
        parser.add_argument("template", help="template name or id")
        parser.add_argument("name", help="the VM's name (its libvirt domain's)")
        parser.add_argument("--host", help="host name or id (default: the template's host)")
        parser.add_argument("--clone", choices=["thin", "full"], default="thin")
        parser.add_argument("--hostname", default="", help="the guest's host name (default: the VM's name)")
        parser.add_argument("--ssh-key", action="append", default=[], metavar="KEYFILE",
                            help="a file of public keys for root (one per line); repeatable")
        parser.add_argument("--root-password-hash-file",
                            help="a file holding root's crypt(3) password hash (not an argument: argv is public)")
        parser.add_argument("--start", action="store_true", help="start the VM once it is defined")
        parser.add_argument("--follow", action="store_true", help="follow the job; exit status is its outcome")

    def handle(self, *args, **o):
        t = Template.objects.filter(name=o["template"]).first() or (
            Template.objects.filter(pk=o["template"]).first() if o["template"].isdigit() else None)
        if t is None:
            raise CommandError(f"no template {o['template']!r}")
        data = {"template": t.pk, "name": o["name"], "clone": o["clone"], "start": o["start"], "identity": {}}
        if o["host"]:
            host = Host.objects.filter(name=o["host"]).first() or (
                Host.objects.filter(pk=o["host"]).first() if o["host"].isdigit() else None)
            if host is None:
                raise CommandError(f"no host {o['host']!r}")
            data["host"] = host.pk
        identity = data["identity"]
        if o["hostname"]:
            identity["hostname"] = o["hostname"]
        keys = []
        for path in o["ssh_key"]:
            keys += [line for line in Path(path).read_text().splitlines() if line.strip()]
        if keys:
            identity["ssh_authorized_keys"] = keys
        if o["root_password_hash_file"]:
            identity["root_password_hash"] = Path(o["root_password_hash_file"]).read_text().strip("\n")
        ser = VmSerializer(data=data)
        if not ser.is_valid():
            raise CommandError(_errors(ser.errors))
        try:
            op = service.start(ser.validated_data["vm"])
        except Refused as e:
            raise CommandError(f"{e.field}: {e.message}") from None
        self.stdout.write(f"job {op.pk} (VM {o['name']!r} from template {t.name!r})")
        if o["follow"]:
            call_command("job_follow", str(op.pk), stdout=self.stdout)


def _made(o):
    """The VM the command made (the newest of that name, on the host asked for if any)."""
    vms = Vm.objects.filter(name=o["name"])
    if o.get("host"):
        vms = vms.filter(host__name=o["host"]) if not o["host"].isdigit() else vms.filter(host_id=o["host"])
    return vms.order_by("-created").first()


# Recorded in the audit trail as vm.create (source cli, the OS user), accepted or refused.
Command = audited(VmCreate, "vm.create", _made, object_type="vm")
