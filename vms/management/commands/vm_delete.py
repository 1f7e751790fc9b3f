from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from audit.cli import audited
from sealing.service import Refused
from vms import service
from vms.models import Vm


class VmDelete(BaseCommand):
    help = "Delete a VM: its domain, volumes and seed on its host (a job); --follow waits for the result."

    def add_arguments(self, parser):
        parser.add_argument("name", help="the VM's name (or id)")
        parser.add_argument("--host", help="host name, when VMs of that name are on several hosts")
        parser.add_argument("--force", action="store_true", help="power a running VM off first")
        parser.add_argument("--follow", action="store_true", help="follow the job; exit status is its outcome")

    def handle(self, *args, **o):
        vms = Vm.objects.filter(name=o["name"]).select_related("host")
        if o["host"]:
            vms = vms.filter(host__name=o["host"])
        found = list(vms) or (list(Vm.objects.filter(pk=o["name"])) if o["name"].isdigit() else [])
        if not found:
            raise CommandError(f"no VM {o['name']!r}")
        if len(found) > 1:
            raise CommandError(f"VMs named {o['name']!r} on several hosts: give --host")
        try:
            op = service.request_delete(found[0], force=o["force"])
        except Refused as e:
            raise CommandError(f"{e.field}: {e.message}") from None
        self.stdout.write(f"job {op.pk} (delete VM {found[0].name!r})")
        if o["follow"]:
            call_command("job_follow", str(op.pk), stdout=self.stdout)


def _named(o):
    vms = Vm.objects.filter(name=o["name"])
    if o.get("host"):
        vms = vms.filter(host__name=o["host"])
    found = list(vms[:2]) or (list(Vm.objects.filter(pk=o["name"])) if o["name"].isdigit() else [])
    return found[0] if len(found) == 1 else None


# Recorded in the audit trail as vm.delete (source cli, the OS user), accepted or refused.
Command = audited(VmDelete, "vm.delete", _named, object_type="vm")
