"""django-q2 entry points. Keep them thin: the flow lives in sealing.flow, the lease and the query
for orphaned flows in sealing.lease. (Old callback nonces are hostjobs' own task.)"""

from django.conf import settings
from django.utils import timezone
from django_q.tasks import async_task

from audit import events as audit
from hostjobs.errors import VmsealError
from hostjobs.models import Host
from sealing import engine, flow, lease, reconcile


def run_template_flow(template_id: int) -> None:
    flow.run(template_id)


def sweep() -> int:
    """Resume flows whose worker died (an unfinished row of any registered flow, ``engine.register``:
    a template, a VM, lease expired) and retry clean-ups that could not finish (a host was unreachable).
    Runs on a schedule and when a worker starts."""
    now = timezone.now()
    n = 0
    for f in engine.registered():
        task, kind = f.task, f.audit_kind or f.kind
        for pk, name in lease.orphaned(f.model).values_list("pk", "name"):
            async_task(task, pk, task_name=f"{kind}-{pk}-resume-{now.timestamp():.0f}")
            audit.record(f"{kind}.resume", object_type_=kind, object_id=pk, object_repr=name)  # as "system"
            n += 1
    return n


def scan_hosts(host_ids: list[int] | None = None) -> dict[str, str]:
    """Scan every host's pool (or those of ``host_ids``) and log the drift (sealing.reconcile); runs on
    the vmseal-host-scan schedule. A host that cannot be scanned is logged and the others go on."""
    if not settings.VMSEAL_HOST_SCAN_MINUTES and host_ids is None:
        return {}
    hosts = Host.objects.all() if host_ids is None else Host.objects.filter(pk__in=host_ids)
    out = {}
    for host in hosts:
        try:
            report = reconcile.scan_host(host)
            out[host.name] = ("drift: " if report.drift else "no drift: ") + report.summary()
        except VmsealError as e:
            reconcile.log.warning("host %s: not scanned: %s: %s", host, e.code, e)
            out[host.name] = f"not scanned: {e.code}: {e}"
    return out
