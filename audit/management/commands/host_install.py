from audit.cli import audited
from hostjobs.management.commands.host_install import Command as HostInstall
from hostjobs.models import Host


def _host(o):
    h = o["host"]
    return Host.objects.filter(name=h).first() or (Host.objects.filter(pk=h).first() if h.isdigit() else None)


Command = audited(HostInstall, "host.install", _host, object_type="host")
