"""django-q2 tasks of hostjobs."""

from django.utils import timezone

from hostjobs import hostops, virt
from hostjobs.errors import HostError
from hostjobs.models import Host


def check_host(host_id: int) -> dict:
    """Run the host check and keep its result on the Host (admin 'Re-check' action, host_check)."""
    host = Host.objects.get(pk=host_id)
    try:
        info = hostops.host_info(host)
        info["libvirt"] = bool(virt.call(host, lambda conn: conn.getLibVersion()))
        info["reachable"] = True
    except HostError as e:
        info = {"reachable": False, "error": f"{e.code}: {e}"}
    host.last_check, host.last_checked = info, timezone.now()
    host.save(update_fields=["last_check", "last_checked"])
    return info
