import json

from django.core.management.base import BaseCommand, CommandError

from hostjobs import hostops, port, virt
from hostjobs.errors import HostError
from hostjobs.models import Host


class Command(BaseCommand):
    help = "Check a host: reachability with its pinned key, libvirt/virt-sysprep/libguestfs, KVM, pool space."

    def add_arguments(self, parser):
        parser.add_argument("host", help="host name or id")
        parser.add_argument("--json", action="store_true", dest="as_json")

    def handle(self, *args, host, as_json=False, **options):
        h = Host.objects.filter(name=host).first() or (Host.objects.filter(pk=host).first() if host.isdigit() else None)
        if h is None:
            raise CommandError(f"no host {host!r}")
        try:
            info = port.for_host(h).helper(hostops.host_info(h.pool_path), timeout=60)
            info["libvirt_uri_ok"] = bool(virt.call(h, lambda conn: conn.getLibVersion()))
        except HostError as e:
            raise CommandError(f"{h.name}: {e.code}: {e}") from None
        info["reachable"] = True
        info["host_key"] = "matches the pinned key"
        from django.utils import timezone

        h.last_check, h.last_checked = info, timezone.now()
        h.save(update_fields=["last_check", "last_checked"])
        if as_json:
            self.stdout.write(_dumps(info))
        else:
            for k, v in info.items():
                self.stdout.write(f"{k:18} {v}")


def _dumps(d):
    return json.dumps(d, sort_keys=True)
