"""The template flow, oVirt's sequence:

    CREATE_TEMPLATE -> COPY_DISKS -> ASSIGN_ILLEGAL -> SEAL -> ASSIGN_LEGAL_SHARED -> DONE
    (seal=false: CREATE_TEMPLATE -> COPY_DISKS -> ASSIGN_LEGAL_SHARED -> DONE)

and on any failure ROLLBACK -> (template removed) or FAILED (when a volume could not be deleted: it
stays ILLEGAL). The phase is saved after each step, and each step is idempotent, so a worker that
dies mid-flow resumes at the saved phase. The operation HostJob (the one the client follows) turns
terminal only when the flow, rollback included, has ended.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.db import transaction

from hostjobs import hostops, virt
from hostjobs.errors import DomainNotStopped, HostError, VmsealError, VolumeRefused
from hostjobs.models import HostJob, JobAction, JobStatus
from sealing import sysprep
from templates.models import Phase, Template, TemplateDisk, TemplateStatus
from volumes import rules
from volumes.models import Legality, Volume, VolumeType

log = logging.getLogger("vmseal.flow")

PROGRESS = {Phase.CREATE_TEMPLATE: 0, Phase.COPY_DISKS: 5, Phase.ASSIGN_ILLEGAL: 35, Phase.SEAL: 40,
            Phase.ASSIGN_LEGAL_SHARED: 90, Phase.DONE: 100}


class FlowFailed(VmsealError):
    code = "flow_failed"


def next_phase(phase: str, seal: bool) -> str:
    order = [Phase.CREATE_TEMPLATE, Phase.COPY_DISKS]
    order += [Phase.ASSIGN_ILLEGAL, Phase.SEAL] if seal else []
    order += [Phase.ASSIGN_LEGAL_SHARED, Phase.DONE]
    return order[order.index(phase) + 1]


def run(template_id: int) -> None:
    t = Template.objects.select_related("host", "job").filter(pk=template_id).first()
    if t is None or t.phase in (Phase.DONE, Phase.FAILED):
        return  # rolled back and removed, or already ended
    op = t.job
    if op.status == JobStatus.PENDING:
        op.start()
    if t.phase == Phase.ROLLBACK:  # a worker died while rolling back: finish it
        rollback(t, op, t.error or "rollback resumed", "rollback")
        return
    phase = t.phase
    try:
        while t.phase != Phase.DONE:
            phase = t.phase
            started = time.monotonic()
            STEPS[phase](t, op)
            t.phase = next_phase(phase, t.seal)
            t.save(update_fields=["phase", "status", "sealed", "updated"])
            op.append_log(f"{phase} done in {time.monotonic() - started:.1f}s\n")
            op.set_progress(PROGRESS[t.phase])
        op.finish()
    except Exception as e:  # every failure fails the whole operation
        code = getattr(e, "code", "error")
        message = f"{phase} failed: {e}"
        if not isinstance(e, VmsealError):
            log.exception("template %s: unexpected error in %s", t.pk, phase)
        rollback(t, op, message, code)


# -- steps ---------------------------------------------------------------------------------------------
def create_template(t: Template, op: HostJob) -> None:
    """Re-check the source in the worker (the request's check may be stale), record its disks, and
    make sure the host's template pool exists."""
    info = virt.domain_info(t.host, t.vm_name)
    if not info.stopped:
        raise DomainNotStopped(f"VM {t.vm_name!r} is {info.state}: only a shut-off VM can become a template")
    writable = [d for d in info.disks if not d.readonly]
    if not writable:
        raise FlowFailed(f"VM {t.vm_name!r} has no disks to copy")
    with transaction.atomic():
        t.disks.filter(volume__isnull=True).delete()
        if not t.disks.exists():
            TemplateDisk.objects.bulk_create(
                TemplateDisk(template=t, index=i, target=d.target, source_path=d.path, source_format=d.format)
                for i, d in enumerate(writable)
            )
        t.vm_uuid = info.uuid
        t.save(update_fields=["vm_uuid"])
    virt.ensure_pool(t.host)


def copy_disks(t: Template, op: HostJob) -> None:
    for disk in t.disks.select_related("volume"):
        vol = disk.volume
        if vol is not None and vol.legality == Legality.LEGAL:
            continue  # copied before a restart
        _ensure_source_stopped(t)
        if vol is None:
            vol = Volume(host=t.host)
            vol.save()
            disk.volume = vol
            disk.save(update_fields=["volume"])
        with child_job(op, JobAction.COPY, f"volume:{vol.id}", f"copy {disk.target} ({disk.source_path})"):
            vol.mirror(hostops.create_volume(t.host, str(vol.id), disk.source_path, disk.source_format))
    virt.refresh_pool(t.host)


def assign_illegal(t: Template, op: HostJob) -> None:
    for vol in _volumes(t):
        update_volume(op, vol, legality=rules.ILLEGAL)


def seal(t: Template, op: HostJob) -> None:
    vols = _volumes(t)
    argv = sysprep.build_command([(v.path, v.format) for v in vols])
    with child_job(op, JobAction.SEAL, f"template:{t.pk}", f"virt-sysprep over {len(vols)} disk(s)") as job:
        job.append_log("$ " + " ".join(argv) + "\n")
        collected: list[str] = []
        last_save = [0.0]

        def on_line(line: str) -> None:
            collected.append(line)
            p = sysprep.progress_of(line)
            now = time.monotonic()
            if p is not None or now - last_save[0] > 2:
                last_save[0] = now
                job.set_progress(p if p is not None else job.progress, job.log + "".join(collected))

        result = hostops.run_on_volumes(
            t.host, [str(v.id) for v in vols], argv, env=sysprep.environment(t.host.guestfs_backend_settings),
            timeout=settings.VMSEAL_SEAL_TIMEOUT, on_line=on_line,
        )
        out = "".join(collected)
        job.set_progress(job.progress, job.log + out)
        if result.get("exit_code") != 0:
            raise FlowFailed(f"virt-sysprep exited {result.get('exit_code')}: {sysprep.error_summary(out)}")


def assign_legal_shared(t: Template, op: HostJob) -> None:
    for vol in _volumes(t):
        if t.seal:
            update_volume(op, vol, legality=rules.LEGAL, type=rules.SHARED)
        else:
            update_volume(op, vol, type=rules.SHARED)
    t.status = TemplateStatus.OK
    t.sealed = t.seal


STEPS = {
    Phase.CREATE_TEMPLATE: create_template,
    Phase.COPY_DISKS: copy_disks,
    Phase.ASSIGN_ILLEGAL: assign_illegal,
    Phase.SEAL: seal,
    Phase.ASSIGN_LEGAL_SHARED: assign_legal_shared,
}


# -- building blocks ------------------------------------------------------------------------------------
class child_job:
    """A storage/virt job under the operation: started on enter, done on exit, failed (and the error
    re-raised) when the body raises."""

    def __init__(self, op: HostJob, action: str, target: str, description: str):
        self.job = HostJob.create(op.host, action, parent=op, target=target, description=description)

    def __enter__(self) -> HostJob:
        self.job.start()
        return self.job

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            self.job.finish()
        else:
            self.job.fail(str(exc), getattr(exc, "code", "error"))
        return False


def update_volume(op: HostJob, vol: Volume, *, legality: str | None = None, type: str | None = None) -> None:
    """vdsm's update_volume as a storage job. A stale generation (e.g. the host applied the change but
    the worker died before recording it) is resolved by re-reading the host's truth once."""
    want = {k: v for k, v in (("legality", legality), ("type", type)) if v is not None}
    if all(getattr(vol, k) == v for k, v in want.items()):
        return  # already applied (resumed flow)
    with child_job(op, JobAction.UPDATE_VOLUME, f"volume:{vol.id}",
                   " ".join(f"{k}={v}" for k, v in want.items()) + f" (gen {vol.generation})"):
        try:
            reported = hostops.update_volume(op.host, str(vol.id), generation=vol.generation, **want)
        except VolumeRefused:
            vol.mirror(hostops.volume_info(op.host, str(vol.id)))
            if all(getattr(vol, k) == v for k, v in want.items()):
                return
            reported = hostops.update_volume(op.host, str(vol.id), generation=vol.generation, **want)
        vol.mirror(reported)


def rollback(t: Template, op: HostJob, message: str, code: str) -> None:
    log.warning("template %s (%s): %s; rolling back", t.pk, t.name, message)
    t.status, t.phase, t.error, t.sealed = TemplateStatus.FAILED, Phase.ROLLBACK, message, False
    t.save(update_fields=["status", "phase", "error", "sealed", "updated"])
    op.append_log(message + "\n")
    leftovers = []
    for disk in t.disks.select_related("volume"):
        vol = disk.volume
        if vol is None:
            continue
        try:
            with child_job(op, JobAction.DELETE, f"volume:{vol.id}", f"rollback: delete {disk.target}"):
                hostops.delete_volume(t.host, str(vol.id))
        except HostError as e:
            # Could not delete: it stays ILLEGAL (the host helper marks it so before unlinking).
            Volume.objects.filter(pk=vol.pk).update(legality=Legality.ILLEGAL)
            leftovers.append(f"{vol.id}: {e}")
            continue
        disk.volume = None
        disk.save(update_fields=["volume"])
        vol.delete()
    try:
        virt.refresh_pool(t.host)
    except HostError:
        pass
    if leftovers:
        t.phase = Phase.FAILED
        t.error = f"{message}; volumes left ILLEGAL on the host: {'; '.join(leftovers)}"
        t.save(update_fields=["phase", "error", "updated"])
        op.append_log(t.error + "\n")
    else:
        t.delete()
        op.append_log("rollback done: template and volumes removed\n")
    op.refresh_from_db(fields=["status"])
    if op.status == JobStatus.ABORTING:
        op.mark_aborted(message)
    elif not op.is_terminal:
        op.fail(message, code)


def _volumes(t: Template) -> list[Volume]:
    vols = [d.volume for d in t.disks.select_related("volume")]
    if any(v is None for v in vols):
        raise FlowFailed("a disk has no volume")
    return vols


def _ensure_source_stopped(t: Template) -> None:
    info = virt.domain_info(t.host, t.vm_name)
    if not info.stopped:
        raise DomainNotStopped(f"VM {t.vm_name!r} is {info.state}: it must stay shut off while its disks are copied")


__all__ = ["run", "next_phase", "rollback", "VolumeType"]
