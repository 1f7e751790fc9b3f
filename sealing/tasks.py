"""django-q2 entry points. Keep them thin: the flow lives in sealing.flow, the lease and the query
for orphaned flows in sealing.lease. (Old callback nonces are hostjobs' own task.)"""

from django.utils import timezone
from django_q.tasks import async_task

from sealing import flow, lease


def run_template_flow(template_id: int) -> None:
    flow.run(template_id)


def sweep() -> int:
    """Resume flows whose worker died (unfinished template, lease expired) and retry clean-ups that
    could not finish (a host was unreachable). Runs on a schedule and when a worker starts."""
    now = timezone.now()
    n = 0
    for pk in lease.orphaned().values_list("pk", flat=True):
        async_task("sealing.tasks.run_template_flow", pk, task_name=f"template-{pk}-resume-{now.timestamp():.0f}")
        n += 1
    return n
