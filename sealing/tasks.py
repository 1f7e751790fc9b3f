"""django-q2 entry points. Keep them thin: the flow lives in sealing.flow."""

from datetime import timedelta

from django.db.models import Q
from django.utils import timezone
from django_q.tasks import async_task

from hostjobs.callbacks import forget_old_nonces
from sealing import flow
from templates.models import Phase, Template, TemplateStatus


def run_template_flow(template_id: int) -> None:
    flow.run(template_id)


def sweep() -> int:
    """Resume flows whose worker died (unfinished template, lease expired) and retry clean-ups that
    could not finish (a host was unreachable). Runs on a schedule and when a worker starts."""
    now = timezone.now()
    stale = (Template.objects.filter(Q(status=TemplateStatus.LOCKED) | Q(phase__in=[Phase.ROLLBACK, Phase.FAILED]))
             .filter(Q(lease_expires__isnull=True) | Q(lease_expires__lt=now))
             .filter(updated__lt=now - timedelta(seconds=10)))
    n = 0
    for pk in stale.values_list("pk", flat=True):
        async_task("sealing.tasks.run_template_flow", pk, task_name=f"template-{pk}-resume-{now.timestamp():.0f}")
        n += 1
    forget_old_nonces()
    return n
