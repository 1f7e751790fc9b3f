"""What /metrics reads from the database at scrape time: counts and gauges that are true whichever
gunicorn worker or qcluster did the work, because the database is where the work is recorded.

A few cheap aggregate queries per scrape (GROUP BY over indexed status columns, one pass over the
finished jobs for the duration histogram), none per row.

Adding a "<model> by status" gauge for another app is one line in STATUS_GAUGES, e.g. for the vms app:

    StatusGauge("vmseal_vms", "VMs by status", "vms.Vm"),

(the model by its "app_label.Model" name, so this module imports nothing of that app; the status
field's choices are all exported, those with no rows as 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.apps import apps
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from hostjobs.models import ACTION_KIND, JobStatus

# seconds; host jobs run from a fraction of a second (storage) to tens of minutes (a seal under TCG)
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
ACTIVE = (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.ABORTING)  # as hostjobs.runner.reserve counts slots
RUNNING = (JobStatus.RUNNING, JobStatus.ABORTING)


@dataclass(frozen=True)
class StatusGauge:
    """``<name>{status}``: rows of ``model`` by the value of its ``field``, every choice exported."""

    name: str
    documentation: str
    model: str  # "app_label.Model"
    field: str = "status"

    def collect(self):
        model = apps.get_model(self.model)
        counts = {r[self.field]: r["n"] for r in model._default_manager.order_by().values(self.field)
                  .annotate(n=Count("pk"))}
        choices = [c for c, _ in model._meta.get_field(self.field).choices or []]
        g = GaugeMetricFamily(self.name, self.documentation, labels=[self.field])
        for value in dict.fromkeys([*choices, *counts]):
            g.add_metric([str(value)], counts.get(value, 0))
        return g


STATUS_GAUGES = [
    StatusGauge("vmseal_templates", "Templates by status", "templates.Template"),
    StatusGauge("vmseal_vms", "VMs by status", "vms.Vm"),
]


def _job_counts():
    from hostjobs.models import HostJob

    counts = {(r["kind"], r["action"], r["status"]): r["n"]
              for r in HostJob.objects.order_by().values("kind", "action", "status").annotate(n=Count("pk"))}
    jobs = GaugeMetricFamily("vmseal_jobs", "Operations (kind=operation) and host jobs (storage, virt) in the "
                             "database, by action and status", labels=["kind", "action", "status"])
    running = GaugeMetricFamily("vmseal_jobs_running", "Operations and host jobs running now (running or aborting)",
                                labels=["kind", "action"])
    keys = {(str(k), str(a)) for a, k in ACTION_KIND.items()} | {(k, a) for k, a, _ in counts}
    for kind, action in sorted(keys):
        for status in JobStatus.values:
            jobs.add_metric([kind, action, status], counts.get((kind, action, status), 0))
        running.add_metric([kind, action], sum(counts.get((kind, action, s), 0) for s in RUNNING))
    return [jobs, running]


def _job_durations():
    """Histogram of the finished jobs' run times (started -> completed), from their rows: the same in every
    process, and it survives restarts. Jobs that never started (aborted while pending) are not in it."""
    from hostjobs.models import HostJob

    took = ExpressionWrapper(F("completed") - F("started"), output_field=DurationField())
    aggregates = {f"le{i}": Count("pk", filter=Q(took__lte=timedelta(seconds=b)))
                  for i, b in enumerate(DURATION_BUCKETS)}
    rows = (HostJob.objects.filter(status__in=[JobStatus.DONE, JobStatus.FAILED, JobStatus.ABORTED],
                                   started__isnull=False, completed__isnull=False)
            .annotate(took=took).order_by().values("kind", "action", "status")
            .annotate(n=Count("pk"), total=Sum("took"), **aggregates))
    h = HistogramMetricFamily("vmseal_job_duration_seconds", "Run time of finished operations and host jobs "
                              "(started to completed), by action and final status", labels=["kind", "action", "status"])
    for r in rows:
        buckets = [(str(float(b)), r[f"le{i}"]) for i, b in enumerate(DURATION_BUCKETS)] + [("+Inf", r["n"])]
        total = r["total"]
        seconds = total.total_seconds() if isinstance(total, timedelta) else (total or 0) / 1e6
        h.add_metric([r["kind"], r["action"], r["status"]], buckets, max(seconds, 0.0))
    return [h]


def _hosts():
    from hostjobs.models import Host, HostJob, JobAction

    busy = {r["host_id"]: r["n"] for r in HostJob.objects.filter(action=JobAction.SEAL, status__in=ACTIVE)
            .order_by().values("host_id").annotate(n=Count("pk"))}
    in_use = GaugeMetricFamily("vmseal_seal_slots_in_use", "Seals holding a slot on the host now (pending, running "
                               "or aborting)", labels=["host"])
    limit = GaugeMetricFamily("vmseal_seal_slots", "Seals the host runs at once (its seal limit)", labels=["host"])
    reachable = GaugeMetricFamily("vmseal_host_reachable", "1 if the host's last check reached it, 0 if not "
                                  "(hosts never checked are left out)", labels=["host"])
    free = GaugeMetricFamily("vmseal_host_pool_free_bytes", "Free bytes in the host's template pool, as last "
                             "checked", labels=["host"])
    checked = GaugeMetricFamily("vmseal_host_last_checked_timestamp_seconds", "When the host was last checked "
                                "(unix time)", labels=["host"])
    for h in Host.objects.only("pk", "name", "max_parallel_seals", "last_check", "last_checked"):
        in_use.add_metric([h.name], busy.get(h.pk, 0))
        limit.add_metric([h.name], h.seal_limit)
        check = h.last_check or {}
        if h.last_checked is not None:
            checked.add_metric([h.name], h.last_checked.timestamp())
        if "reachable" in check:
            reachable.add_metric([h.name], 1 if check["reachable"] else 0)
        if isinstance(check.get("pool_free_bytes"), int | float):
            free.add_metric([h.name], check["pool_free_bytes"])
    return [in_use, limit, reachable, free, checked]


class DatabaseCollector:
    """A prometheus_client collector: everything above, queried when scraped."""

    def collect(self):
        yield from _job_counts()
        yield from _job_durations()
        yield from _hosts()
        for gauge in STATUS_GAUGES:
            yield gauge.collect()

    def describe(self):
        return []  # no description at registration: that would query the database
