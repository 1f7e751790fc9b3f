from django.core.management.base import BaseCommand, CommandError

from hostjobs import hostops
from hostjobs.errors import HostError
from hostjobs.models import Host
from hostjobs.runner import callback_url


class Command(BaseCommand):
    help = "Deploy vmseal's job runner and libvirt hooks to a host over SSH, and reload its libvirtd."

    def add_arguments(self, parser):
        parser.add_argument("host", help="host name or id")

    def handle(self, *args, host, **options):
        h = Host.objects.filter(name=host).first() or (Host.objects.filter(pk=host).first() if host.isdigit() else None)
        if h is None:
            raise CommandError(f"no host {host!r}")
        url = callback_url(h)
        try:
            hostops.install_hooks(h, url)
        except HostError as e:
            raise CommandError(str(e)) from None
        self.stdout.write(f"installed on {h.name}: runner {hostops.remote_dir()}, hooks qemu+daemon, "
                          f"callbacks to {url or '(none: polling only)'}")
