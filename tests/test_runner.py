"""hostjobs.runner on the database: a host's seal slots. (The host's own job runner, hooks/vmseal_host.py:
test_host_runner.py; job transitions: test_hostjob_transitions.py.)"""

import pytest


@pytest.mark.django_db
def test_a_host_slot_is_reserved_only_below_the_limit_and_freed_by_the_job_ending(settings, host):
    from hostjobs import runner
    from hostjobs.models import HostJob, JobAction

    settings.VMSEAL_MAX_PARALLEL_SEALS = 1
    assert host.seal_limit == 1
    ops = [HostJob.create(host, JobAction.CREATE_TEMPLATE) for _ in range(2)]

    def reserve(op, **kw):
        return runner.reserve(host, JobAction.SEAL, limit=host.seal_limit, parent=op, step="SEAL", target=f"t:{op.pk}",
                              description="seal", timeout=60, interval=0.01, **kw)

    first = reserve(ops[0])
    assert first.status == "pending"
    assert reserve(ops[0]) == first, "a resumed flow gets its own reservation back"
    waits, asked = [], []
    with pytest.raises(runner.JobAborted):
        reserve(ops[1], on_wait=waits.append, should_abort=lambda: asked.append(1) or len(asked) > 3)
    assert waits == [1], "told once that the one slot is busy"
    assert HostJob.objects.filter(action=JobAction.SEAL).count() == 1, "nothing reserved beyond the limit"
    first.start()
    first.end("done")
    second = reserve(ops[1])
    assert second.parent_id == ops[1].pk
    host.max_parallel_seals = 3
    assert host.seal_limit == 3, "the host's own limit wins over the setting"
