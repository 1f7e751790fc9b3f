"""django-q2 tasks of hostjobs: the host check, and the clean-up of callback nonces (scheduled by
migration 0007 as ``vmseal-forget-nonces``, every minute)."""

from datetime import timedelta

from django.utils import timezone

from hostjobs import hostops, port, virt
from hostjobs.callbacks import MAX_SKEW
from hostjobs.errors import HostError
from hostjobs.models import CallbackNonce, Host


def check_host(host_id: int) -> dict:
    """Run the host check and keep its result on the Host (admin 'Re-check' action, host_check)."""
    host = Host.objects.get(pk=host_id)
    try:
        info = port.for_host(host).helper(hostops.host_info(host.pool_path), timeout=60)
        info["libvirt"] = bool(virt.call(host, lambda conn: conn.getLibVersion()))
        info["reachable"] = True
    except HostError as e:
        info = {"reachable": False, "error": f"{e.code}: {e}"}
    host.last_check, host.last_checked = info, timezone.now()
    host.save(update_fields=["last_check", "last_checked"])
    return info


def forget_old_nonces() -> int:
    """Drop the nonces of accepted notifications older than twice the accepted skew: a replay of one
    of those is refused for its timestamp anyway."""
    return CallbackNonce.objects.filter(received__lt=timezone.now() - timedelta(seconds=2 * MAX_SKEW)).delete()[0]
