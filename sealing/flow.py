"""The template flow, oVirt's sequence:

    CREATE_TEMPLATE -> COPY_DISKS -> ASSIGN_ILLEGAL -> SEAL -> ASSIGN_LEGAL_SHARED -> DONE
    (seal=false: CREATE_TEMPLATE -> COPY_DISKS -> ASSIGN_LEGAL_SHARED -> DONE)

SEAL is one virt-sysprep run, and vmseal's checks run inside its appliance session, in the guest (one
launch, see ``sealing.sysprep``; nothing runs over the guest's files on the host): a guard that refuses
anything but one unencrypted Linux guest, and the audit, which fails the run if any identity item is
left. What the guest reports (its os-release, the audit's lines) is recorded, never trusted. Either
refusal fails SEAL: the copies are deleted and nothing was ever LEGAL.

and on any failure or cancel ROLLBACK -> (template removed) or CLEANUP_FAILED (a volume could not be
deleted: it stays ILLEGAL, and the sweeper retries the clean-up when the host is back).

The template's status and phase move only through its transition methods (``templates.states``): a
step returns what it found (the VM's UUID, the guest's report and audit) and the flow records it with
the move that ends the step (``advance``, ``finish``, or ``start_rollback`` for a failed step, whose
exception carries its findings); the last step's ``finish`` and the operation's end are one transaction.

Every storage step (copy, update_volume, delete) and the seal run as host jobs (``hostjobs.runner``):
detached on the host, their end pushed by the host or polled. The phase is saved after each step, a
lease shows that a worker is running the flow (``sealing.lease``), and host jobs are found again by
(step, target), so a worker that dies mid-flow is replaced by the sweeper and resumes without running
anything twice. The operation HostJob (the one the client follows) turns terminal only when the flow,
rollback included, has ended: ``HostJob.end`` done, failed, or aborted once a cancel reached it
(``HostJob.cancel``: the API, the admin, or a source VM that starts, ``sealing.signals``). A step
checks for a cancel between host calls and a waiting host job aborts its host work; either raises
Cancelled, and the flow rolls back.

The flow reaches its host only through the host's port (``hostjobs.port``, ``Context.host``): libvirt
calls directly (``Context.host_call``, retried while the host is unreachable), storage and seal work as
host jobs whose commands ``hostjobs.hostops`` builds (``runner`` takes the same port). A test puts a fake
host behind the port (tests/utils/fakehost.py) and runs this flow as it is.

This module reads top to bottom: run, the steps, then rollback and delete.
"""

from __future__ import annotations

import logging

from django.conf import settings

from hostjobs import hostops, port, runner
from hostjobs.errors import DomainNotStopped, HostError
from hostjobs.models import HostJob, JobAction, JobStatus
from sealing import engine, sysprep
from sealing.engine import CANCELLED, Cancelled, Context, FlowFailed, StepFailed  # noqa: F401 - the flow's vocabulary
from sealing.lease import Lease
from templates import hardware
from templates.models import Phase, Template, TemplateDisk
from templates.states import next_phase
from volumes import rules
from volumes.models import Legality, Volume
from webhooks import events as webhooks

log = logging.getLogger("vmseal.flow")

PROGRESS = {Phase.CREATE_TEMPLATE: 0, Phase.COPY_DISKS: 5, Phase.ASSIGN_ILLEGAL: 20, Phase.SEAL: 25,
            Phase.ASSIGN_LEGAL_SHARED: 95, Phase.DONE: 100}
ABORTABLE = (Phase.CREATE_TEMPLATE, Phase.COPY_DISKS, Phase.ASSIGN_ILLEGAL, Phase.SEAL)


class GuestRefused(StepFailed):
    code = "guest_refused"


# -- the flow (the engine runs it: sealing.engine) -----------------------------------------------------------
def run(template_id: int) -> None:
    engine.run(FLOW, template_id)


def _finish(t: Template, op: HostJob, line: str, found: dict) -> None:
    engine.finish(FLOW, t, op, line, found)


# -- steps ---------------------------------------------------------------------------------------------
def create_template(ctx: Context) -> dict:
    """Re-check the source in the worker (the request's check may be stale), record its disks, and
    make sure the host's template pool exists. Found: the VM's UUID and its hardware (its domain XML
    without identity or state, ``templates.hardware.scrub``), what VMs made from the template are built from."""
    t = ctx.t
    info = ctx.host_call(ctx.host.domain_info, t.vm_name)
    if not info.stopped:
        raise DomainNotStopped(f"VM {t.vm_name!r} is {info.state}: only a shut-off VM can become a template")
    writable = [d for d in info.disks if not d.readonly]
    if not writable:
        raise FlowFailed(f"VM {t.vm_name!r} has no disks to copy")
    ctx.host_call(ctx.host.check_sources, [info])  # the VM may have been redefined since the request
    if info.problems:
        raise FlowFailed(f"VM {t.vm_name!r} cannot become a template: {'; '.join(info.problems)}")
    if not t.disks.exists():
        TemplateDisk.objects.bulk_create(
            TemplateDisk(template=t, index=i, target=d.target, source_path=d.path, source_format=d.format)
            for i, d in enumerate(writable)
        )
    ctx.host_call(ctx.host.ensure_pool)
    # the VMs made from this template are built from its source's hardware
    return {"vm_uuid": info.uuid, "hardware": hardware.scrub(ctx.host_call(ctx.host.domain_xml, t.vm_name))}


def copy_disks(ctx: Context) -> None:
    t = ctx.t
    for disk in t.disks.select_related("volume"):
        vol = disk.volume
        if vol is not None and vol.legality == Legality.LEGAL:
            continue  # copied before a restart
        _ensure_source_stopped(ctx)
        if vol is None:
            vol = Volume(host=t.host)
            vol.save()
            disk.volume = vol
            disk.save(update_fields=["volume"])
        job = ctx.host_job(
            JobAction.COPY, Phase.COPY_DISKS, f"volume:{vol.id}", f"copy {disk.target} ({disk.source_path})",
            hostops.create_volume(t.host.pool_path, vol.id, source=disk.source_path,
                                  source_format=disk.source_format, rate_limit=t.host.copy_rate_limit or 0),
            timeout=settings.VMSEAL_COPY_TIMEOUT,
        )
        vol.mirror(job.result)
    ctx.host_call(ctx.host.refresh_pool)


def assign_illegal(ctx: Context) -> None:
    for vol in _volumes(ctx.t):
        update_volume(ctx, Phase.ASSIGN_ILLEGAL, vol, legality=rules.ILLEGAL)


def seal(ctx: Context) -> dict:
    """One virt-sysprep over all the template's disks, with vmseal's guard and audit in its session.
    Found: what the guest reported and the audit (also carried by the exception of a failed seal)."""
    t = ctx.t
    vols = _volumes(t)
    lib = hostops.remote_dir()
    command = sysprep.build_command([(v.path, v.format) for v in vols], t.seal_options,
                                    prepare_script=f"{lib}/guest_prepare.sh", audit_script=f"{lib}/guest_audit.sh",
                                    firstboot_script=f"{lib}/guest_firstboot.sh",
                                    firstboot_agent=f"{lib}/vmseal_firstboot.sh", report_disk=sysprep.REPORT_DISK)
    description = f"virt-sysprep over {len(vols)} disk(s)"
    timeout = t.host.seal_timeout or settings.VMSEAL_SEAL_TIMEOUT
    try:  # a slot first: at most host.seal_limit seals run at once on a host; the others wait here
        runner.reserve(t.host, JobAction.SEAL, limit=t.host.seal_limit, parent=ctx.op, step=Phase.SEAL,
                       target=f"template:{t.pk}", description=description, timeout=timeout,
                       heartbeat=ctx.heartbeat, should_abort=ctx.op.abort_requested,
                       on_wait=lambda busy: ctx.op.append_log(
                           f"waiting for a seal slot on host {t.host} ({busy} of {t.host.seal_limit} busy)\n"))
    except runner.JobAborted:  # abort_requested() has read the reason
        raise Cancelled(ctx.op.error or CANCELLED) from None
    try:
        job = ctx.host_job(JobAction.SEAL, Phase.SEAL, f"template:{t.pk}", description,
                           hostops.run(command.argv, pool=t.host.pool_path, writable=[v.id for v in vols],
                                       env=sysprep.environment(t.host.guestfs_backend_settings),
                                       report_disk=sysprep.REPORT_DISK), timeout=timeout,
                           progress_of=sysprep.progress_of, files=command.files)
    except runner.JobFailed as e:
        job = ctx.op.children.filter(step=Phase.SEAL).order_by("-created").first()
        code = (job.result or {}).get("exit_code") if job else None
        if code is None:
            raise
        found = _seal_found(job.log, passed=False)
        if job.result.get("error") == "pool_full":  # the host's helper stopped a seal its full pool had stalled
            raise FlowFailed(job.result.get("message") or "the template pool is full", found=found) from e
        refusal = sysprep.refusal_of(job.log)
        if refusal:
            raise GuestRefused(refusal, found=found) from e
        audit = found["audit"]
        if audit and not audit["passed"]:
            raise FlowFailed("audit found identity left: " + "; ".join(
                f"{i['item']} ({i['detail']})" for i in audit["items"] if not i["ok"]), found=found) from e
        raise FlowFailed(f"virt-sysprep exited {code}: {sysprep.error_summary(job.log)}", found=found) from e
    return _seal_found(job.log, passed=True)


def _seal_found(log_text: str, *, passed: bool) -> dict:
    """What a seal's log tells of the guest: its audit, and what it reported about itself (if it did)."""
    guest = sysprep.guest_of(log_text)
    return {"audit": sysprep.audit_of(log_text, passed), **({"guest_os": guest} if guest else {})}


def assign_legal_shared(ctx: Context) -> None:
    t = ctx.t
    for vol in _volumes(t):
        if t.seal:
            update_volume(ctx, Phase.ASSIGN_LEGAL_SHARED, vol, legality=rules.LEGAL, type=rules.SHARED)
        else:
            update_volume(ctx, Phase.ASSIGN_LEGAL_SHARED, vol, type=rules.SHARED)


STEPS = {
    Phase.CREATE_TEMPLATE: create_template,
    Phase.COPY_DISKS: copy_disks,
    Phase.ASSIGN_ILLEGAL: assign_illegal,
    Phase.SEAL: seal,
    Phase.ASSIGN_LEGAL_SHARED: assign_legal_shared,
}


class TemplateFlow(engine.Flow):
    model = Template
    kind = audit_kind = "template"
    task = "sealing.tasks.run_template_flow"
    delete_action = JobAction.DELETE_TEMPLATE
    steps = STEPS
    progress = PROGRESS
    ok_event, failed_event = "template.ok", "template.failed"

    def event_data(self, t):
        return _template_data(t)

    def next_phase(self, t, phase):
        return next_phase(phase, t.seal)

    def remove(self, t, op, lease):
        return delete_volumes(t, op, Phase.ROLLBACK, "rollback: delete", lease)

    def delete(self, t, op, lease):
        delete(t, op, lease)

    def removed_line(self, t):
        return "rollback done: template and volumes removed\n"


FLOW = TemplateFlow()


# -- building blocks ------------------------------------------------------------------------------------
def update_volume(ctx: Context, step: str, vol: Volume, *, legality: str | None = None,
                  type: str | None = None) -> None:
    """vdsm's update_volume as a storage job, with the generation the DB mirrors. A resumed flow finds
    the job it started before (and its result) instead of applying the change twice."""
    want = {k: v for k, v in (("legality", legality), ("type", type)) if v is not None}
    if all(getattr(vol, k) == v for k, v in want.items()):
        return
    rules.plan_update(vol.meta(), generation=vol.generation, **want)  # refuse early what the host would refuse
    args = hostops.update_volume(vol.host.pool_path, vol.id, generation=vol.generation, **want)
    job = ctx.host_job(JobAction.UPDATE_VOLUME, step, f"volume:{vol.id}",
                       " ".join(f"{k}={v}" for k, v in want.items()) + f" (gen {vol.generation})", args,
                       timeout=settings.VMSEAL_STORAGE_TIMEOUT)
    vol.mirror(job.result)


def rollback(t: Template, op: HostJob, message: str, code: str, lease: Lease, found: dict | None = None) -> None:
    """Stop the operation's host jobs and remove what it made (``engine.rollback``)."""
    engine.rollback(FLOW, t, op, message, code, lease, found)


_end_operation = engine.end_operation


def delete_volumes(t: Template, op: HostJob, step: str, label: str, lease: Lease) -> list[str]:
    """Delete each of the template's volumes on its host (a storage job each) and its row. Returns what
    could not be deleted; those stay ILLEGAL (the host marks them so before unlinking anything)."""
    leftovers = []
    for disk in t.disks.select_related("volume"):
        vol = disk.volume
        if vol is None:
            continue
        try:
            runner.run(t.host, JobAction.DELETE, hostops.delete_volume(t.host.pool_path, vol.id),
                       parent=op, step=step, target=f"volume:{vol.id}", description=f"{label} {disk.target}",
                       timeout=settings.VMSEAL_STORAGE_TIMEOUT, heartbeat=lease.heartbeat)
        except HostError as e:
            Volume.objects.filter(pk=vol.pk).update(legality=Legality.ILLEGAL)
            leftovers.append(f"{vol.id}: {e}")
            continue
        disk.volume = None
        disk.save(update_fields=["volume"])
        vol.delete()
    try:
        port.for_host(t.host).refresh_pool()
    except HostError:
        pass
    return leftovers


def delete(t: Template, op: HostJob, lease: Lease) -> None:
    """Delete a template: each volume on its host (a storage job each), then the row. A volume that
    cannot be deleted stays (ILLEGAL) and the template is kept failed; deleting it again retries."""
    if op.is_terminal:
        return
    if op.status == JobStatus.PENDING:
        op.start()
    held = holders(t)
    if held:  # made after the request's check: the template's volumes back them now
        message = f"template {t.name!r} backs VMs: {', '.join(held)}"
        t.delete_incomplete(message)
        op.end(JobStatus.FAILED, message, "template_in_use")
        return
    # A full clone's Vm.template is set to NULL with the row (on_delete=SET_NULL): it is independent of it.
    leftovers = delete_volumes(t, op, "DELETE", "delete", lease)
    if leftovers:
        t.delete_incomplete(f"delete incomplete: {'; '.join(leftovers)}")
        webhooks.emit("template.failed", t, **_template_data(t))
        if op.end(JobStatus.FAILED, t.error, "delete_incomplete"):
            webhooks.emit("job.failed", op, **engine.job_data(op))
    else:
        gone = {"type": "template", "id": t.pk, "repr": str(t)}
        data = _template_data(t)
        t.delete()
        op.end(JobStatus.DONE)
        webhooks.emit("template.deleted", gone, **data)


def holders(t: Template) -> list[str]:
    """What keeps ``t`` from being deleted, by name, read through reverse relations only (sealing never
    imports the apps that build on templates): a volume whose parent (backing file) is one of its
    volumes (a thin VM's disk, ``Volume.parent``; PROTECT also refuses it at the database), and any VM
    still being made from it or rolling back (a full copy reads its volumes; ``Template.vms``, any
    phase but DONE)."""
    held = {}
    for vol_id, vm_name in Volume.objects.filter(parent__disk__template=t).values_list("id", "vm_disk__vm__name"):
        held[vm_name or f"volume {vol_id}"] = f"{vm_name} (thin)" if vm_name else f"volume {vol_id}"
    vms = getattr(t, "vms", None)  # the reverse relation of the vms app, when it is installed
    if vms is not None:
        for name, clone, phase in vms.exclude(phase=engine.DONE).values_list("name", "clone", "phase"):
            held.setdefault(name, f"{name} ({clone}, {phase})")  # being made, or its rollback unfinished
    return [held[k] for k in sorted(held)]


def _template_data(t: Template) -> dict:
    """What a template's webhook events carry besides its type, id and name."""
    return {"name": t.name, "host": t.host_id, "vm": t.vm_name, "status": t.status, "sealed": t.sealed,
            "error": t.error, "job": str(t.job_id) if t.job_id else None}


def _volumes(t: Template) -> list[Volume]:
    vols = [d.volume for d in t.disks.select_related("volume", "volume__host")]
    if any(v is None for v in vols):
        raise FlowFailed("a disk has no volume")
    return vols


def _ensure_source_stopped(ctx: Context) -> None:
    t = ctx.t
    info = ctx.host_call(ctx.host.domain_info, t.vm_name)
    if not info.stopped:
        raise DomainNotStopped(f"VM {t.vm_name!r} is {info.state}: it must stay shut off while its disks are copied")
