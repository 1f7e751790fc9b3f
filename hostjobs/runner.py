"""Host jobs, app side: start a job on its host, learn its end by push (the host's signed callback,
``hostjobs.callbacks``) or by polling (fallback), abort it, clear it.

This is the common part of oVirt's HostJobCallback: storage jobs and virt jobs differ only in what
they run on the host (``args``) and how their progress reads (``progress_of``).

On the host a job is a detached runner with its state in /var/lib/vmseal/jobs/<id>/ (see
``hooks/vmseal_host.py``): it survives the app, the worker and libvirtd restarting. Starting a job
that already exists on the host never runs it twice, so a resumed flow simply re-attaches. The host
is reached through its port (``hostjobs.port``), the job verbs' arguments built by ``hostops``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from hostjobs import hostops, port
from hostjobs.errors import HostCommandFailed, HostError, HostUnreachable, InvalidTransition, VolumeRefused
from hostjobs.models import LOG_LIMIT, Host, HostJob, JobStatus

log = logging.getLogger("vmseal.runner")
POLL_MIN, POLL_MAX = 1.0, 10.0  # poll backoff, seconds
WATCH = 0.1  # how often a waiter re-reads the job row (where pushes land)


class JobFailed(HostError):
    code = "job_failed"


class JobAborted(HostError):
    code = "aborted"


def callback_url(host) -> str:
    return host.callback_url or getattr(settings, "VMSEAL_CALLBACK_URL", "")


def new_job(host, action, *, parent, step, target, description, timeout: float) -> HostJob:
    return HostJob.create(host, action, parent=parent, step=step, target=target, description=description,
                          deadline=timezone.now() + timedelta(seconds=timeout))


ACTIVE = (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.ABORTING)


def reserve(host, action, *, limit: int, parent: HostJob, step: str, target: str, description: str, timeout: float,
            heartbeat: Callable[[], None] | None = None, should_abort: Callable[[], bool] | None = None,
            on_wait: Callable[[int], None] | None = None, interval: float = 0.5) -> HostJob:
    """Create the (pending) job for ``action`` on ``host`` once fewer than ``limit`` such jobs are
    active there; wait meanwhile. Counting and creating are one transaction that locks the host row
    (SQLite: the IMMEDIATE transaction's write lock), so concurrent workers never exceed the limit.
    A job this parent already reserved for the step and target is returned as is (a resumed flow).
    Raises JobAborted when ``should_abort`` says so while waiting."""
    waited = False
    while True:
        mine = (parent.children.filter(step=step, action=action, target=target)
                .exclude(status__in=[JobStatus.FAILED, JobStatus.ABORTED]).first())
        if mine is not None:
            return mine
        with transaction.atomic():
            Host.objects.select_for_update().filter(pk=host.pk).exists()
            busy = HostJob.objects.filter(host=host, action=action, status__in=ACTIVE).count()
            if busy < limit:
                return new_job(host, action, parent=parent, step=step, target=target, description=description,
                               timeout=timeout)
        if not waited and on_wait:
            on_wait(busy)
        waited = True
        if heartbeat:
            heartbeat()
        if should_abort and should_abort():
            raise JobAborted("cancelled while waiting for a free slot on the host")
        time.sleep(interval)


def start(job: HostJob, args: list[str], files: dict[str, str] | None = None) -> None:
    """Start ``args`` (a helper verb, built by ``hostops``) as host job ``job``; idempotent. ``files``
    ({name: text}) are written 0600 in the job's directory on the host, where the command runs: what
    must not be in an argv (the spec goes on stdin)."""
    spec = {"args": args, "callback_url": callback_url(job.host), "secret": job.host.callback_secret,
            "host": job.host_id, "files": files or {}}
    # Running before the host is asked: a fast job's pushed end must find the row running, not pending.
    if job.status == JobStatus.PENDING:
        job.start()
    state = port.for_host(job.host).helper(hostops.job_start(job.id), input=json.dumps(spec).encode(), timeout=60)
    apply_state(job, state)


def poll(job: HostJob, progress_of: Callable[[str], int | None] | None = None) -> None:
    state = port.for_host(job.host).helper(hostops.job_status(job.id, job.log_offset), timeout=30)
    apply_state(job, state, progress_of)


def apply_state(job: HostJob, state: dict, progress_of: Callable[[str], int | None] | None = None) -> None:
    """Take what the host said about a job (a poll answer or a pushed notification). Idempotent: a
    terminal job is never moved again, a repeated notification changes nothing."""
    now = timezone.now()
    fields = {"last_seen": now}
    chunk = state.get("log")
    if state.get("log_complete") and state.get("status") == "done" and isinstance(chunk, str):
        # a pushed end with the whole log: the host removes the job's directory once we answer
        job.log, job.log_offset, job.host_cleared = chunk[-LOG_LIMIT:], int(state.get("log_offset") or 0), True
        fields.update(log=job.log, log_offset=job.log_offset, host_cleared=True)
    elif chunk is not None and state.get("log_offset", 0) > job.log_offset:
        job.log = (job.log + chunk)[-LOG_LIMIT:]
        job.log_offset = state["log_offset"]
        fields.update(log=job.log, log_offset=job.log_offset)
        if progress_of:
            marks = [p for p in (progress_of(ln) for ln in chunk.splitlines()) if p is not None]
            if marks:
                job.progress = max(job.progress, marks[-1])
                fields["progress"] = job.progress
    HostJob.objects.filter(pk=job.pk).update(**fields)
    status = state.get("status")
    if status not in ("done", "failed", "aborted"):
        return
    job.refresh_from_db(fields=["status"])
    if job.is_terminal:
        return
    # A push and a poll may bring the same end at once: the first to write it wins (end() is False for
    # the second). Once a cancel reached the job (aborting), its end on the host is its abort.
    if status == "done":
        HostJob.objects.filter(pk=job.pk).update(result=state.get("result"))
        job.result = state.get("result")
        if job.status == JobStatus.RUNNING:
            job.end(JobStatus.DONE)
    elif status == "aborted" or job.status == JobStatus.ABORTING:
        job.end(JobStatus.ABORTED, state.get("error") or "aborted", "aborted")
    else:
        result = state.get("result") or {}
        job.result = result
        HostJob.objects.filter(pk=job.pk).update(result=result)
        job.end(JobStatus.FAILED, state.get("error") or f"exit status {state.get('exit_code')}",
                "volume_refused" if state.get("exit_code") == 3 else "job_failed")


def wait(job: HostJob, *, progress_of=None, heartbeat: Callable[[], None] | None = None,
         should_abort: Callable[[], bool] | None = None, restart: Callable[[], None] | None = None) -> HostJob:
    """Block until ``job`` is terminal: a push shows up in the row within WATCH seconds; meanwhile the
    host is polled with backoff (1 s doubling to 10 s). An unreachable host leaves the job's state
    unknown until its deadline, then the job fails. ``should_abort`` asks to abort it on the host.
    ``restart`` (re)sends an unconfirmed start: starting is idempotent on the host."""
    next_poll = time.monotonic() + POLL_MIN
    backoff = POLL_MIN
    next_beat = 0.0
    abort_sent = False
    while True:
        job.refresh_from_db(fields=["status", "progress", "error", "error_code", "result", "log_offset", "log",
                                    "deadline"])
        if job.is_terminal:
            return job
        now = time.monotonic()
        if heartbeat and now >= next_beat:
            heartbeat()
            next_beat = now + 5
        if should_abort and not abort_sent and should_abort():
            abort_sent = True
            try:
                abort(job)
            except HostError as e:
                log.warning("abort of %s failed: %s", job.pk, e)
            continue
        if job.deadline and timezone.now() > job.deadline:
            try:
                poll(job, progress_of)  # one last look before giving up
            except HostError:
                pass
            try:
                job.end(JobStatus.FAILED, f"no result from host {job.host} by the job's deadline", "deadline")
            except InvalidTransition:  # moved meanwhile (a cancel): look again
                continue
            return job
        if now >= next_poll:
            try:
                poll(job, progress_of)
            except VolumeRefused as e:
                job.refresh_from_db(fields=["status", "last_seen"])
                if e.detail == "no_such_job" and job.last_seen is None and restart:
                    try:  # our start never reached the host (it was unreachable then): send it again
                        restart()
                    except HostUnreachable:
                        pass
                    continue
                if e.detail == "no_such_job":  # the host answers, and does not know this job: it is lost
                    try:
                        job.end(JobStatus.FAILED, f"host {job.host} does not know this job", "unknown_job")
                    except InvalidTransition:  # moved meanwhile (a cancel): look again
                        continue
                    return job
                raise
            except HostError as e:
                log.info("job %s: host %s unreachable (%s); state unknown, waiting", job.pk, job.host, e.code)
            backoff = min(backoff * 2, POLL_MAX)
            next_poll = now + backoff
            continue
        time.sleep(WATCH)


def abort(job: HostJob, reason: str = "aborted on request") -> None:
    """Stop a job's work on its host: cancel the job (``HostJob.cancel``: pending -> aborted, running
    -> aborting), tell the host's runner, and take its answer. A job the cancel refuses (ended, already
    aborting, a delete) keeps its status, and its host is told all the same: a job failed by its
    deadline may still run there."""
    try:
        job.cancel(reason)
    except InvalidTransition:
        pass
    host = port.for_host(job.host)
    try:
        state = host.helper(hostops.job_abort(job.id), timeout=30)
    except VolumeRefused:  # already terminal on the host
        state = host.helper(hostops.job_status(job.id), timeout=30)
    apply_state(job, state)


def clear(job: HostJob) -> None:
    """Remove a terminal job's directory on the host (its log is in the row already)."""
    try:
        port.for_host(job.host).helper(hostops.job_clear(job.id), timeout=30)
    except (HostCommandFailed, VolumeRefused, HostError) as e:
        log.info("could not clear job %s on %s: %s", job.pk, job.host, e)


def run(host, action, args: list[str], *, parent: HostJob, step: str, target: str, description: str,
        timeout: float, progress_of=None, heartbeat=None, should_abort=None,
        files: dict[str, str] | None = None) -> HostJob:
    """Run a host job to its end and return it, re-attaching to one this parent already started for
    the same step and target. Raises JobFailed / JobAborted when it did not end done."""
    job = (parent.children.filter(step=step, action=action, target=target)
           .exclude(status__in=[JobStatus.FAILED, JobStatus.ABORTED]).order_by("-created").first())
    if job is None:
        job = new_job(host, action, parent=parent, step=step, target=target, description=description,
                      timeout=timeout)
    if job.status in (JobStatus.PENDING, JobStatus.RUNNING):
        if job.status == JobStatus.PENDING or job.last_seen is None:
            try:
                start(job, args, files)
            except HostUnreachable:
                pass  # unknown whether it started: the wait re-sends the start until the job's deadline
            except HostError as e:
                job.end(JobStatus.FAILED, f"could not start on host {host}: {e}", e.code)
                raise
        wait(job, progress_of=progress_of, heartbeat=heartbeat, should_abort=should_abort,
             restart=lambda: start(job, args, files))
        job.refresh_from_db()
        if not job.host_cleared:
            try:
                poll(job, progress_of)  # the log's tail: only a done job's push carries its whole log
            except HostError:
                pass
            job.refresh_from_db()
    if job.status == JobStatus.DONE:
        if not job.host_cleared:
            clear(job)
        return job
    if job.status == JobStatus.ABORTED:
        raise JobAborted(job.error or "aborted")
    raise JobFailed(job.error or "failed", detail=job.error_code)
