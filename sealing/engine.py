"""The flow engine: what every vmseal flow shares (the template flow, ``sealing.flow``; the VM flow,
``vms.flow``). One engine, several step lists.

A flow is a row (a Template, a Vm) with guarded ``status``/``phase`` moves (``advance``, ``finish``,
``start_rollback``, ``rollback_incomplete``, ...), an operation HostJob (``job``) the client follows,
and lease fields (``sealing.lease``). A ``Flow`` names its model, its steps (phase -> function of a
Context), their order and progress, how its rollback removes what it made, and its delete. The engine:

    run(flow, pk)       takes the row's lease (a LeaseKeeper renews it), and resumes the flow where its
                        phase says: a delete, a clean-up to retry, a rollback to finish, or the steps
    the step loop       each step's findings are recorded with the move that ends it; the phase is saved
                        after each step, so a worker that dies is replaced by the sweeper and resumes
                        without running anything twice (host jobs are found again by step and target)
    rollback            abandon the operation's host jobs still running, the flow's own removal, then
                        the row removed (or CLEANUP_FAILED: the sweeper retries), the operation ended
    Context             host_call (libvirt, retried while the host is unreachable), host_job (a host job
                        run to its end, aborted on a cancel), check_abort
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from hostjobs import port, runner
from hostjobs.errors import HostError, HostUnreachable, InvalidTransition, VmsealError
from hostjobs.models import HostJob, JobStatus
from sealing.lease import Lease, LeaseKeeper, LeaseLost
from webhooks import events as webhooks

log = logging.getLogger("vmseal.flow")

CANCELLED = "cancelled on request"  # the reason of a cancel that gave none
DONE, ROLLBACK, CLEANUP_FAILED = "DONE", "ROLLBACK", "CLEANUP_FAILED"  # every flow's vocabulary


class StepFailed(VmsealError):
    """A step's failure, with what the step found before it failed (``found``: recorded by the rollback)."""

    def __init__(self, message: str, *, found: dict | None = None, detail: str = ""):
        super().__init__(message, detail=detail)
        self.found = found or {}


class FlowFailed(StepFailed):
    code = "flow_failed"


class Cancelled(VmsealError):
    code = "aborted"


class Context:
    """What a step needs besides its row (``obj``; ``t`` for the template flow's steps): its operation
    job, the host's port (``hostjobs.port``), the lease heartbeat and the abort check."""

    def __init__(self, obj, op: HostJob, lease: Lease):
        self.obj, self.op, self.lease = obj, op, lease
        self.host = port.for_host(obj.host)

    @property
    def t(self):
        return self.obj

    def heartbeat(self) -> None:
        self.lease.heartbeat()

    def check_abort(self) -> None:
        """Raise Cancelled, with the cancel's reason, once a cancel has reached the operation."""
        if self.op.abort_requested():
            raise Cancelled(self.op.error or CANCELLED)

    def host_call(self, fn, *args, **kwargs):
        """A direct call to the host (libvirt over SSH, a helper verb): an unreachable host is retried
        with backoff for up to VMSEAL_HOST_RETRY seconds (sshd or libvirtd restarting, a link flapping)
        before the step fails. Host jobs need no such retry: they run on the host and are found again."""
        deadline = time.monotonic() + settings.VMSEAL_HOST_RETRY
        delay, told = 1.0, False
        while True:
            try:
                return fn(*args, **kwargs)
            except HostUnreachable as e:
                if time.monotonic() + delay > deadline:
                    raise
                if not told:
                    self.op.append_log(f"host {self.obj.host} unreachable ({e}); retrying for up to "
                                       f"{settings.VMSEAL_HOST_RETRY}s\n")
                    told = True
            self.heartbeat()
            self.check_abort()
            time.sleep(delay)
            delay = min(delay * 2, 10.0)

    def start_host_job(self, action, step, target, description, args, *, timeout, files=None) -> None:
        """Start a host job without waiting for it (``host_job`` with the same step and target later
        re-attaches to it and waits): several jobs then run on the host at once. A job this operation
        already has for the step and target (a resumed flow) is not started again."""
        self.check_abort()
        job = (self.op.children.filter(step=step, action=action, target=target)
               .exclude(status__in=[JobStatus.FAILED, JobStatus.ABORTED]).first())
        if job is None:
            job = runner.new_job(self.obj.host, action, parent=self.op, step=step, target=target,
                                 description=description, timeout=timeout)
        if job.status == JobStatus.PENDING:
            try:
                runner.start(job, args, files)
            except HostUnreachable:
                pass  # host_job's wait re-sends the start until the job's deadline
            except HostError as e:
                job.end(JobStatus.FAILED, f"could not start on host {self.obj.host}: {e}", e.code)
                raise

    def host_job(self, action, step, target, description, args, *, timeout, progress_of=None,
                 files=None) -> HostJob:
        self.check_abort()
        try:
            return runner.run(self.obj.host, action, args, parent=self.op, step=step, target=target,
                              description=description, timeout=timeout, progress_of=progress_of,
                              heartbeat=self.heartbeat, should_abort=self.op.abort_requested, files=files)
        except runner.JobAborted:  # the op's abort_requested() that stopped the job has read the reason
            raise Cancelled(self.op.error or CANCELLED) from None


class Flow:
    """One kind of flow: subclasses set ``model``, ``kind``, ``task``, ``delete_action``, ``steps`` and
    ``progress``, and implement ``next_phase``, ``remove`` (the rollback's clean-up) and ``delete``.
    Each app registers its flow (``register``, from its AppConfig.ready()) so that the sweeper finds it."""

    model = None
    kind = "flow"
    task: str = ""  # the django-q2 task (dotted path) that runs the flow of one row: task(pk)
    audit_kind: str = ""  # the object type its records name (the sweeper's "<audit_kind>.resume")
    delete_action = None
    steps: dict = {}
    progress: dict = {}
    context = Context

    def load(self, pk):
        return self.model.objects.select_related("host", "job").filter(pk=pk).first()

    def next_phase(self, obj, phase: str) -> str:
        raise NotImplementedError

    def remove(self, obj, op: HostJob, lease: Lease) -> list[str]:
        """Remove what the flow made on the host and in the database, except the row itself; returns
        what could not be removed (then the row stays, CLEANUP_FAILED)."""
        raise NotImplementedError

    def delete(self, obj, op: HostJob, lease: Lease) -> None:
        raise NotImplementedError

    def removed_line(self, obj) -> str:
        return f"rollback done: {self.kind} and volumes removed\n"

    # Webhook events (``webhooks.events``): sent once the change they tell of commits.
    ok_event: str | None = None  # the flow's row turned ok
    failed_event: str | None = None  # its flow failed (the rollback starts)

    def event_data(self, obj) -> dict:
        """What the row's webhook events carry besides its type, id and name."""
        return {"name": obj.name, "host": obj.host_id, "status": obj.status, "error": obj.error,
                "job": str(obj.job_id) if obj.job_id else None}


# -- the registry: every kind of flow, for the sweeper ------------------------------------------------
FLOWS: dict[str, Flow] = {}


def register(flow: Flow) -> Flow:
    """Make ``flow`` known to the sweeper (``sealing.tasks.sweep``). Called from its app's
    AppConfig.ready(): the engine never imports the apps that use it."""
    if not flow.task or flow.model is None:
        raise ValueError(f"flow {flow.kind!r} needs a model and a task to be registered")
    FLOWS[flow.audit_kind or flow.kind] = flow
    return flow


def registered() -> list[Flow]:
    return list(FLOWS.values())


# -- running a flow ------------------------------------------------------------------------------------
def run(flow: Flow, pk: int) -> None:
    lease = Lease.acquire(pk, flow.model)
    if lease is None:
        return  # another worker runs this flow
    keeper = LeaseKeeper(lease)
    keeper.start()
    try:
        resume(flow, pk, lease)
    except LeaseLost as e:  # the flow is another worker's now: leave everything to it
        log.warning("%s; this worker stops", e)
    finally:
        keeper.stop()
        lease.release()


def resume(flow: Flow, pk: int, lease: Lease) -> None:
    """Go on where the row's phase and its operation say: a delete, a clean-up to retry, a rollback to
    finish, or the steps."""
    obj = flow.load(pk)
    if obj is not None and obj.job and obj.job.action == flow.delete_action:
        flow.delete(obj, obj.job, lease)
        return
    if obj is None or obj.phase == DONE:
        return
    op = obj.job
    if obj.phase == CLEANUP_FAILED:  # a clean-up that could not finish: try again
        rollback(flow, obj, op, obj.error or "clean-up retried", "rollback", lease)
        return
    if op.status == JobStatus.PENDING:
        op.start()
    if obj.phase == ROLLBACK or op.status in (JobStatus.ABORTED, JobStatus.ABORTING):
        rollback(flow, obj, op, obj.error or op.error or CANCELLED, "aborted", lease)
        return
    run_steps(flow, obj, op, lease)


def run_steps(flow: Flow, obj, op: HostJob, lease: Lease) -> None:
    ctx = flow.context(obj, op, lease)
    phase = obj.phase
    try:
        while True:
            phase = obj.phase
            started = time.monotonic()
            found = flow.steps[phase](ctx) or {}
            ctx.check_abort()
            lease.heartbeat()  # a phase is only recorded by the flow's owner
            line = f"{phase} done in {time.monotonic() - started:.1f}s\n"
            following = flow.next_phase(obj, phase)
            if following == DONE:
                finish(flow, obj, op, line, found)
                return
            obj.advance(following, **found)
            op.append_log(line)
            op.set_progress(flow.progress[following])
    except LeaseLost:
        raise
    except Exception as e:  # every failure fails the whole operation
        code = getattr(e, "code", "error")
        message = f"{phase} failed: {e}" if not isinstance(e, Cancelled) else f"cancelled in {phase}: {e}"
        if not isinstance(e, VmsealError):
            log.exception("%s %s: unexpected error in %s", flow.kind, obj.pk, phase)
        rollback(flow, obj, op, message, code, lease, found=getattr(e, "found", None))


def finish(flow: Flow, obj, op: HostJob, line: str, found: dict) -> None:
    """The row turns ok and its operation done in one transaction: a client never sees one without
    the other, and a cancel landing at the end either came first (the operation's finish is refused,
    nothing of this is written, and the flow rolls back) or is refused (the operation is done)."""
    try:
        with transaction.atomic():
            obj.finish(**found)
            op.append_log(line)
            op.set_progress(flow.progress[DONE])
            op.end(JobStatus.DONE)
            if flow.ok_event:
                webhooks.emit(flow.ok_event, obj, **flow.event_data(obj))  # sent once this commits
    except Exception:
        obj.refresh_from_db()  # as the database has it again: still in its last step
        op.refresh_from_db(fields=["log", "progress"])
        raise


# -- rollback ---------------------------------------------------------------------------------------------
def rollback(flow: Flow, obj, op: HostJob, message: str, code: str, lease: Lease, found: dict | None = None) -> None:
    """Stop the operation's host jobs and remove what it made. ``found``: what the failed step read
    (recorded with the move to ROLLBACK). A rollback resumed by another worker goes on where it was."""
    lease.heartbeat()  # only the flow's owner rolls it back
    log.warning("%s %s (%s): %s; rolling back", flow.kind, obj.pk, obj.name, message)
    if obj.phase != ROLLBACK:
        obj.start_rollback(message, **(found or {}))
        if flow.failed_event:
            webhooks.emit(flow.failed_event, obj, **flow.event_data(obj))
    op.append_log(message + "\n")
    abandon_jobs(op)
    leftovers = flow.remove(obj, op, lease)
    if leftovers:
        obj.rollback_incomplete(obj.error if "left on the host" in obj.error or "volumes left ILLEGAL" in obj.error
                                else f"{message}; volumes left ILLEGAL on the host: {'; '.join(leftovers)}")
        op.append_log(f"clean-up incomplete: {'; '.join(leftovers)}\n")
    else:
        obj.delete()
        op.append_log(flow.removed_line(obj))
    end_operation(op, message, code)


def abandon_jobs(op: HostJob) -> None:
    """Host jobs of ``op`` that may still run on the host (their result never arrived, or a cancel):
    stop them first, so nothing writes to a volume being deleted."""
    for job in op.children.filter(Q(error_code__in=["deadline"]) | Q(status__in=[JobStatus.PENDING, JobStatus.RUNNING,
                                                                                 JobStatus.ABORTING])):
        try:
            runner.abort(job, "abandoned by the rollback")
        except HostError:
            pass
        job.end(JobStatus.FAILED, "abandoned by the rollback", "rollback")


def job_data(op: HostJob) -> dict:
    """What a job's webhook events carry."""
    return {"action": op.action, "target": op.target, "status": op.status, "error": op.error,
            "error_code": op.error_code, "host": op.host_id}


def end_operation(op: HostJob, message: str, code: str) -> None:
    """The operation ends aborted if a cancel reached it, else failed. A cancel can land between the
    read and the write (RUNNING -> ABORTING): then read again, so the operation never stays unended."""
    while True:
        op.refresh_from_db(fields=["status"])
        try:
            if op.status == JobStatus.ABORTING:
                op.end(JobStatus.ABORTED, message, "aborted")
            elif op.status == JobStatus.RUNNING and op.end(JobStatus.FAILED, message, code):
                webhooks.emit("job.failed", op, **job_data(op))
            return
        except InvalidTransition:
            continue
