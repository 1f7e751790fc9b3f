"""Reactions to host events and worker starts."""

import logging

from django_q.tasks import async_task

from hostjobs.errors import InvalidTransition
from sealing import flow
from templates.models import Template, TemplateStatus

log = logging.getLogger("vmseal.flow")
STARTING = ("prepare", "start", "started")


def on_host_event(sender, host, event, **kwargs):
    """A source VM that starts while its disks are copied or sealed aborts that operation."""
    if event.get("kind") != "domain" or event.get("op") not in STARTING:
        return
    for t in Template.objects.filter(host=host, vm_name=event.get("domain"), status=TemplateStatus.LOCKED,
                                     phase__in=flow.ABORTABLE).select_related("job"):
        if t.job is None:
            continue
        try:  # the flow's worker aborts the current host job and rolls back
            t.job.cancel(f"source VM {t.vm_name!r} started on {host.name} ({event.get('op')}) during {t.phase}")
        except InvalidTransition:  # it has ended, or is being cancelled already
            continue
        log.warning("template %s: source VM started; aborting", t.pk)


def on_worker_spawn(sender, proc_name=None, **kwargs):
    # Resume what a previous cluster left behind as soon as a worker is up (the schedule does the rest).
    async_task("sealing.tasks.sweep", task_name="vmseal-sweep-on-spawn")
