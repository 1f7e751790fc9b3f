"""HostJob's state, moved only by start(), cancel() and end(): guarded transitions, a cancel decided by
the job's status, and ends that race (a push, a poll, another worker) where the first one wins and a
later one writes nothing. Two copies of one row stand for two processes."""

import pytest

from hostjobs import runner
from hostjobs.errors import InvalidTransition, NotCancellable
from hostjobs.models import HostJob, JobAction, JobStatus


def job_in(host, status, action=JobAction.COPY):
    job = HostJob.create(host, action)
    if status == "aborted":
        job.cancel("stop")  # pending -> aborted
    elif status != "pending":
        job.start()
    if status == "aborting":
        job.cancel("stop")
    elif status in ("done", "failed"):
        job.end(status, "" if status == "done" else "it ended", "" if status == "done" else status)
    assert job.status == status
    return job


def row(job):
    return HostJob.objects.get(pk=job.pk)


def test_job_transitions_are_guarded(host):
    job = HostJob.create(host, JobAction.SEAL)
    assert (job.kind, job.status) == ("virt", "pending")
    with pytest.raises(InvalidTransition):
        job.end(JobStatus.DONE)  # pending -> done is not a transition
    with pytest.raises(ValueError, match="not an end"):
        job.end(JobStatus.RUNNING)  # not an end
    with pytest.raises(InvalidTransition):
        job.delete()  # a non-terminal job cannot be deleted
    assert row(job).status == "pending"
    job.start()
    with pytest.raises(InvalidTransition):
        job.start()
    assert job.end(JobStatus.DONE) is True
    assert (job.status, job.progress, row(job).progress) == ("done", 100, 100)
    assert job.completed is not None
    with pytest.raises(InvalidTransition):
        job.cancel()  # cancelling a terminal job is an error
    assert row(job).status == "done"
    job.delete()
    assert job_in(host, "pending").kind == "storage"


def test_cancel_of_a_pending_job_aborts_it_at_once_with_its_reason(host):
    job = job_in(host, "pending", JobAction.CREATE_TEMPLATE)
    job.cancel("cancelled by alice")
    r = row(job)
    assert (r.status, r.error, r.error_code) == ("aborted", "cancelled by alice", "aborted")
    assert r.completed is not None
    assert job.abort_requested()


def test_cancel_of_a_running_job_asks_for_its_abort(host):
    job = job_in(host, "running", JobAction.CREATE_TEMPLATE)
    assert not job.abort_requested()
    job.cancel("cancelled by alice")
    r = row(job)
    assert (r.status, r.error, r.error_code, r.completed) == ("aborting", "cancelled by alice", "", None)
    assert HostJob.objects.get(pk=job.pk).abort_requested(), "the worker's own copy learns it from the row"
    assert job.end(JobStatus.ABORTED, "cancelled in SEAL: cancelled by alice", "aborted") is True
    assert (row(job).status, row(job).error) == ("aborted", "cancelled in SEAL: cancelled by alice")


@pytest.mark.parametrize("status", ["aborting", "done", "failed", "aborted"])
def test_cancel_of_an_aborting_or_ended_job_is_refused_and_writes_nothing(host, status):
    job = job_in(host, status)
    before = row(job)
    with pytest.raises(InvalidTransition, match=f"is {status}: it cannot be cancelled") as e:
        job.cancel("cancelled by alice")
    assert type(e.value) is InvalidTransition
    after = row(job)
    assert (after.status, after.error, after.error_code, after.completed) == \
        (before.status, before.error, before.error_code, before.completed)


@pytest.mark.parametrize("action", [JobAction.DELETE_TEMPLATE, JobAction.DELETE])
@pytest.mark.parametrize("status", ["pending", "running"])
def test_a_delete_is_not_cancellable(host, action, status):
    job = job_in(host, status, action)
    with pytest.raises(NotCancellable, match="delete runs to its end"):
        job.cancel("cancelled by alice")
    assert (row(job).status, row(job).error) == (status, "")


def test_a_cancel_on_a_stale_copy_is_decided_on_the_stored_status(host):
    job = job_in(host, "pending", JobAction.CREATE_TEMPLATE)
    stale = row(job)
    job.start()  # the worker started it; the canceller still holds it pending
    stale.cancel("cancelled by alice")
    assert (row(job).status, row(job).error) == ("aborting", "cancelled by alice"), "running -> aborting, not aborted"
    again = job_in(host, "running", JobAction.CREATE_TEMPLATE)
    stale = row(again)
    again.end(JobStatus.FAILED, "COPY_DISKS failed: boom", "error")
    with pytest.raises(InvalidTransition, match="is failed"):
        stale.cancel("cancelled by alice")


def test_a_cancel_racing_the_jobs_end_leaves_no_cancel_message(host):
    """The canceller read the job running; the job ended done before the cancel's write. The cancel is
    refused (409) and the done job keeps an empty error: the reason is written only with aborting."""
    job = job_in(host, "running", JobAction.CREATE_TEMPLATE)
    canceller = row(job)
    assert job.end(JobStatus.DONE) is True
    with pytest.raises(InvalidTransition, match="is done"):
        canceller.cancel("cancelled by alice")
    r = row(job)
    assert (r.status, r.error, r.error_code) == ("done", "", "")


def test_the_first_end_wins_and_a_second_writes_nothing(host):
    job = job_in(host, "running")
    other = row(job)  # another process's copy of the same row
    assert job.end(JobStatus.FAILED, "first", "job_failed") is True
    completed = row(job).completed
    assert other.end(JobStatus.ABORTED, "second", "aborted") is False
    assert other.end(JobStatus.DONE) is False
    r = row(job)
    assert (r.status, r.error, r.error_code, r.progress, r.completed) == ("failed", "first", "job_failed", 0, completed)
    assert (other.status, other.error, other.error_code) == ("failed", "first", "job_failed"), "the copy is read again"
    assert job.end(JobStatus.FAILED, "again", "x") is False, "ending an ended job again changes nothing"
    assert row(job).error == "first"
    live = job_in(host, "running")
    with pytest.raises(InvalidTransition, match="running -> aborted is not allowed"):
        live.end(JobStatus.ABORTED, "not asked", "aborted")  # only a job being aborted ends aborted
    assert (row(live).status, row(live).error) == ("running", "")


def test_an_end_from_a_copy_that_missed_a_cancel_is_refused_then_decided_again(host):
    job = job_in(host, "running")
    waiter = row(job)  # the worker's copy, about to fail the job at its deadline
    job.cancel("cancelled by alice")  # running -> aborting, which the waiter missed
    with pytest.raises(InvalidTransition, match="changed to aborting meanwhile"):
        waiter.end(JobStatus.FAILED, "no result by the deadline", "deadline")
    assert (row(job).status, row(job).error) == ("aborting", "cancelled by alice"), "nothing written"
    assert waiter.status == "aborting"
    assert waiter.end(JobStatus.FAILED, "no result by the deadline", "deadline") is True
    assert (row(job).status, row(job).error_code) == ("failed", "deadline")


def test_a_result_and_the_deadline_arriving_together_end_the_job_once(host):
    job = job_in(host, "running", JobAction.SEAL)
    waiter = row(job)  # the worker's copy, about to give up at the deadline
    runner.apply_state(job, {"status": "done", "result": {"exit_code": 0}})  # the host's push wins the race
    assert waiter.end(JobStatus.FAILED, "no result by the deadline", "deadline") is False
    assert waiter.status == "done"
    r = row(job)
    assert (r.status, r.error, r.result) == ("done", "", {"exit_code": 0})
    runner.apply_state(waiter, {"status": "failed", "exit_code": 1, "error": "late"})  # a late poll: ignored
    assert (row(job).status, row(job).error) == ("done", "")
    aborting = job_in(host, "aborting", JobAction.SEAL)
    runner.apply_state(aborting, {"status": "failed", "exit_code": 1, "error": "aborted on request"})
    r = row(aborting)
    assert (r.status, r.error, r.error_code) == ("aborted", "aborted on request", "aborted"), \
        "a job being aborted ends aborted"
