"""Host scans, the templates' side (``manage.py host_scan``, the periodic ``sealing.tasks.scan_hosts``).

``volumes.reconcile`` compares a host's pool with the Volume rows and fixes what is safe; this module
adds what only the templates know: which volumes an operation is working on (left out of the scan, so
a scan never races a flow), and the templates whose volumes are missing on the host (failed, with the
reason, by a compare-and-set that only moves an idle ``ok`` template).

The host's VM pool (``Host.vm_pool_path``) is scanned too, as ``report.vm_pool``: VM volumes missing or
differing, unknown volumes and files, like the template pool's; the seeds of the host's VMs
(``<uuid>.seed.iso``) are known files. What is a VM and which VMs are busy is read through the reverse
relations (``host.vms``, ``Volume.vm_disk``): sealing imports nothing of the vms app. A VM whose volume
is missing keeps its status; its volume is marked ILLEGAL with the reason, seen on the VM's page.
"""

from __future__ import annotations

import logging

from django.db.models import Q
from django.utils import timezone

from hostjobs.errors import InvalidTransition
from hostjobs.models import TERMINAL
from templates.models import Phase, Template, TemplateDisk, TemplateStatus
from volumes import reconcile
from volumes.models import Volume
from webhooks import events as webhooks

log = logging.getLogger("vmseal.reconcile")


def _idle(now) -> Q:
    """A template no operation works on: its flow has ended (DONE), no job of it runs, no worker holds
    its lease. (A template in ROLLBACK or FAILED belongs to the sweeper, which retries its clean-up.)"""
    return (Q(phase=Phase.DONE) & Q(status__in=[TemplateStatus.OK, TemplateStatus.FAILED])
            & (Q(job__isnull=True) | Q(job__status__in=TERMINAL))
            & (Q(lease_expires__isnull=True) | Q(lease_expires__lt=now)))


def busy_volume_ids(host, since=None) -> set[str]:
    """Volumes of ``host`` that an operation works on: those of templates that are not idle, those
    changed since ``since``, and, while any operation runs on the host, volumes of no template (a flow
    between two writes: a copy's row before its disk links it, a deleted volume's before it goes)."""
    now = timezone.now()
    busy_templates = Template.objects.filter(host=host).exclude(_idle(now))
    ids = set(Volume.objects.filter(host=host, disk__template__in=busy_templates).values_list("pk", flat=True))
    if since is not None:
        ids |= set(Volume.objects.filter(host=host, updated__gte=since).values_list("pk", flat=True))
    if busy_templates.exists():
        ids |= set(Volume.objects.filter(host=host, disk__isnull=True).values_list("pk", flat=True))
    return {str(i) for i in ids}


def _vms(host):
    """The host's VMs (the vms app's reverse relation), or None when that app is not installed."""
    return getattr(host, "vms", None)


def busy_vm_volume_ids(host, since=None) -> set[str]:
    """Volumes of ``host``'s VM pool that an operation works on: those of VMs that are not idle (being
    made, deleted, rolled back), those changed since ``since``, and, while any VM operation runs on the
    host, VM-pool volumes of no VM (a disk's row before the VM's disk links it, or after it let go)."""
    vms = _vms(host)
    if vms is None:
        return set()
    busy_vms = vms.exclude(_idle(timezone.now()))
    in_pool = Volume.objects.filter(host=host, path__startswith=host.vm_pool_path + "/")
    ids = set(in_pool.filter(vm_disk__vm__in=busy_vms).values_list("pk", flat=True))
    if since is not None:
        ids |= set(in_pool.filter(updated__gte=since).values_list("pk", flat=True))
    if busy_vms.exists():
        ids |= set(in_pool.filter(vm_disk__isnull=True).values_list("pk", flat=True))
    return {str(i) for i in ids}


def known_vm_files(host) -> set[str]:
    """Files of the VM pool that are no volume's but known: each VM's NoCloud seed, and the seed being
    written (``.tmp``) of a VM an operation works on."""
    vms = _vms(host)
    if vms is None:
        return set()
    names = {f"{u}.seed.iso" for u in vms.values_list("uuid", flat=True)}
    names |= {f"{u}.seed.iso.tmp" for u in vms.exclude(_idle(timezone.now())).values_list("uuid", flat=True)}
    return names


def scan_host(host, *, dry_run: bool = False) -> reconcile.Report:
    """Scan ``host``'s template pool and its VM pool (``report.vm_pool``), report the drift and fix what
    is safe (``dry_run``: report what would be changed, change nothing). Volumes busy before or after the
    host's answer are left out."""
    since = timezone.now()
    busy = busy_volume_ids(host)
    report, rows = reconcile.scan(host, busy=lambda: busy | busy_volume_ids(host, since))
    reconcile.apply(host, report, rows, dry_run=dry_run)
    fail_templates_of_missing(host, report, dry_run=dry_run)
    if host.vm_pool_path and host.vm_pool_path != host.pool_path:
        vm_busy = busy_vm_volume_ids(host)
        report.vm_pool, vm_rows = reconcile.scan(host, pool=host.vm_pool_path,
                                                 busy=lambda: vm_busy | busy_vm_volume_ids(host, since),
                                                 known_files=lambda: known_vm_files(host))
        reconcile.apply(host, report.vm_pool, vm_rows, dry_run=dry_run)
    if report.drift:
        log.warning("host %s: pool %s drifted from the database: %s%s", host, report.pool, report.summary(),
                    "".join(f"\n  {c}" for c in report.changed))
    else:
        log.info("host %s: pool %s matches the database (%s)", host, report.pool, report.summary())
    return report


def fail_templates_of_missing(host, report: reconcile.Report, *, dry_run: bool = False) -> None:
    """Fail each idle ``ok`` template that owns a volume the host does not have (any more)."""
    if not report.missing:
        return
    why = {m["id"]: m["why"] for m in report.missing}
    disks = TemplateDisk.objects.filter(volume_id__in=list(why), template__host=host).select_related("template")
    by_template = {}
    for d in disks:
        problem = f"disk {d.target} (volume {d.volume_id}): {why[str(d.volume_id)]}"
        by_template.setdefault(d.template, []).append(problem)
    for t, problems in by_template.items():
        error = f"volumes missing on host {host.name}, found by a host scan: " + "; ".join(problems)
        if not Template.objects.filter(pk=t.pk, status=TemplateStatus.OK).filter(_idle(timezone.now())).exists():
            continue
        if not dry_run:
            try:
                t.volumes_missing(error)  # refused if a delete locked it meanwhile
            except InvalidTransition:
                continue
            webhooks.emit("template.failed", t, name=t.name, host=t.host_id, vm=t.vm_name, status=t.status,
                          sealed=t.sealed, error=t.error, job=str(t.job_id) if t.job_id else None)
        report.changed.append(f"template {t.name!r} failed: {error}")
