"""Template's state machine (templates.states): the transitions tables, every move from every state
(allowed ones work, all others are refused and write nothing), a concurrent move that loses, the guard
against direct assignment, the data migration of the old phase name, and the flow's last move taken
together with its operation's end. Pure database work: no host."""

import pytest

from hostjobs.errors import InvalidTransition
from hostjobs.models import HostJob, JobAction, JobStatus
from templates import states
from templates.models import Phase, Template, TemplateStatus
from templates.states import ProtectedState
from tests.fixtures.hostjobs import KEY

ALL_STATES = [(s, p) for s in TemplateStatus for p in Phase]


def _row(host, status, phase, *, seal=True, name="t"):
    """A template created in a given state: the sanctioned way (at creation)."""
    return Template.objects.create(name=name, host=host, vm_name="v", seal=seal, status=status, phase=phase,
                                   error="before")


def _stored(t):
    return Template.objects.filter(pk=t.pk).values("status", "phase", "error", "sealed", "vm_uuid", "guest_os",
                                                   "audit", "job_id", "updated").get()


def _do(t, move):
    """Run ``move`` on ``t``; returns (target status, target phase, fields it writes)."""
    if move == "advance":
        to = states.next_phase(t.phase, t.seal) if t.phase in states.STEPS else Phase.COPY_DISKS
        t.advance(to, vm_uuid="uuid-1")
        return t.status, to, {"vm_uuid": "uuid-1"}
    if move == "finish":
        t.finish(guest_os="Debian")
        return TemplateStatus.OK, Phase.DONE, {"sealed": True, "guest_os": "Debian"}
    if move == "start_rollback":
        t.start_rollback("SEAL failed: boom", audit={"passed": False, "items": []})
        return TemplateStatus.FAILED, Phase.ROLLBACK, {"error": "SEAL failed: boom", "sealed": False,
                                                       "audit": {"passed": False, "items": []}}
    if move == "rollback_incomplete":
        t.rollback_incomplete("volumes left ILLEGAL")
        return t.status, Phase.CLEANUP_FAILED, {"error": "volumes left ILLEGAL"}
    if move == "lock_for_delete":
        op = HostJob.create(t.host, JobAction.DELETE_TEMPLATE)
        t.lock_for_delete(op)
        return TemplateStatus.LOCKED, t.phase, {"job_id": op.pk}
    if move == "delete_incomplete":
        t.delete_incomplete("delete incomplete: x")
        return TemplateStatus.FAILED, t.phase, {"error": "delete incomplete: x"}
    if move == "volumes_missing":
        t.volumes_missing("volumes missing on host h")
        return TemplateStatus.FAILED, t.phase, {"error": "volumes missing on host h"}
    raise AssertionError(move)


def test_the_tables_are_exactly_what_the_moves_use():
    """Every move's edges pass both tables, and the tables allow nothing that no move does."""
    status_edges, phase_edges = set(), set()
    for move, (sources, to_status, to_phase) in states.MOVES.items():
        for s, p in sources:
            targets = ([states.next_phase(p, seal) for seal in (True, False) if p in states.steps(seal)]
                       if move == "advance" else [to_phase or p])
            for tp in targets:
                new = (to_status or s, tp)
                states.check_tables((s, p), new)
                if new[0] != s:
                    status_edges.add((s, new[0]))
                if tp != p:
                    phase_edges.add((p, tp))
    assert status_edges == {(a, b) for a, bs in states.STATUS_TRANSITIONS.items() for b in bs}
    assert phase_edges == {(a, b) for a, bs in states.PHASE_TRANSITIONS.items() for b in bs}
    assert set(states.STATUS_TRANSITIONS) == set(TemplateStatus)
    assert set(states.PHASE_TRANSITIONS) == set(Phase)
    assert states.PHASE_TRANSITIONS[Phase.DONE] == set(), "DONE is final"


@pytest.mark.parametrize(("old", "new"), [
    ((TemplateStatus.OK, Phase.DONE), (TemplateStatus.FAILED, Phase.ROLLBACK)),  # a finished template
    ((TemplateStatus.OK, Phase.DONE), (TemplateStatus.OK, Phase.DONE)),  # no-op
    ((TemplateStatus.LOCKED, Phase.SEAL), (TemplateStatus.LOCKED, Phase.COPY_DISKS)),  # backwards
    ((TemplateStatus.FAILED, Phase.ROLLBACK), (TemplateStatus.OK, Phase.ROLLBACK)),
])
def test_the_tables_refuse_what_they_do_not_list(old, new):
    with pytest.raises(InvalidTransition):
        states.check_tables(old, new)


@pytest.mark.django_db
@pytest.mark.parametrize("move", sorted(states.MOVES))
def test_each_move_works_from_its_states_and_is_refused_from_every_other(host, move):
    sources = states.MOVES[move][0]
    for i, (status, phase) in enumerate(ALL_STATES):
        t = _row(host, status, phase, name=f"t{i}")
        before = _stored(t)
        if (status, phase) in sources:
            to_status, to_phase, fields = _do(t, move)
            row = _stored(t)
            assert (row["status"], row["phase"]) == (to_status, to_phase), (move, status, phase)
            assert (t.status, t.phase) == (to_status, to_phase), "the instance moved with its row"
            for k, v in fields.items():
                assert row[k] == v, (move, k)
            assert row["updated"] > before["updated"], "a move counts as an update (the sweeper waits on it)"
        else:
            with pytest.raises(InvalidTransition, match=f"{move} is not allowed from {status}/{phase}"):
                _do(t, move)
            assert _stored(t) == before, (move, status, phase)
            assert (t.status, t.phase) == (status, phase)


@pytest.mark.django_db
@pytest.mark.parametrize(("seal", "phase", "to"), [
    (True, Phase.COPY_DISKS, Phase.ASSIGN_LEGAL_SHARED),  # a sealed template never skips SEAL
    (False, Phase.COPY_DISKS, Phase.ASSIGN_ILLEGAL),  # a plain one never enters it
    (True, Phase.ASSIGN_LEGAL_SHARED, Phase.DONE),  # DONE is finish()'s
    (True, Phase.CREATE_TEMPLATE, Phase.SEAL),
])
def test_advance_goes_only_to_the_templates_next_step(host, seal, phase, to):
    t = _row(host, TemplateStatus.LOCKED, phase, seal=seal)
    before = _stored(t)
    with pytest.raises(InvalidTransition, match="not the next step|advance is not allowed from"):
        t.advance(to)
    assert _stored(t) == before


@pytest.mark.django_db
def test_a_finish_records_sealed_as_asked_and_refuses_unknown_findings(host):
    plain = _row(host, TemplateStatus.LOCKED, Phase.ASSIGN_LEGAL_SHARED, seal=False)
    plain.finish()
    assert _stored(plain)["sealed"] is False
    t = _row(host, TemplateStatus.LOCKED, Phase.SEAL, name="t2")
    with pytest.raises(ValueError, match="error"):
        t.advance(Phase.ASSIGN_LEGAL_SHARED, error="not a finding")
    assert _stored(t)["phase"] == Phase.SEAL


@pytest.mark.django_db
def test_a_concurrent_move_loses_cleanly(host):
    """Two instances of one row (two workers): the first move wins; the second raises, writes nothing
    (not even its findings) and its instance reads the row as it is now."""
    first = _row(host, TemplateStatus.LOCKED, Phase.CREATE_TEMPLATE)
    second = Template.objects.get(pk=first.pk)
    first.start_rollback("cancelled in CREATE_TEMPLATE: cancelled on request")
    won = _stored(first)
    with pytest.raises(InvalidTransition, match="moved to failed/ROLLBACK meanwhile"):
        second.advance(Phase.COPY_DISKS, vm_uuid="late")
    assert _stored(first) == won
    assert won["vm_uuid"] == ""
    assert (second.status, second.phase) == (TemplateStatus.FAILED, Phase.ROLLBACK)

    a = _row(host, TemplateStatus.FAILED, Phase.CLEANUP_FAILED, name="left")
    b = Template.objects.get(pk=a.pk)
    a.start_rollback("clean-up retried")  # the sweeper's retry ...
    with pytest.raises(InvalidTransition, match="meanwhile"):  # ... and a delete request, read before it
        b.lock_for_delete(HostJob.create(host, JobAction.DELETE_TEMPLATE))
    assert _stored(a)["job_id"] is None

    gone = _row(host, TemplateStatus.FAILED, Phase.ROLLBACK, name="gone")
    Template.objects.filter(pk=gone.pk).delete()
    with pytest.raises(InvalidTransition, match="removed meanwhile"):
        gone.rollback_incomplete("x")


# -- the guard ------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_status_and_phase_cannot_be_assigned(host):
    t = _row(host, TemplateStatus.LOCKED, Phase.SEAL)
    for field, value in (("status", TemplateStatus.OK), ("phase", Phase.DONE)):
        with pytest.raises(ProtectedState, match=f"Template.{field} is moved only by its transitions"):
            setattr(t, field, value)
        loaded = Template.objects.get(pk=t.pk)
        with pytest.raises(ProtectedState):
            setattr(loaded, field, value)
        deferred = Template.objects.only("name").get(pk=t.pk)  # not loaded yet: still not assignable
        with pytest.raises(ProtectedState):
            setattr(deferred, field, value)
        assert getattr(deferred, field) == getattr(t, field), "loading a deferred field is Django's, allowed"
        fresh = Template(name="new", host=host, vm_name="v")
        with pytest.raises(ProtectedState):
            setattr(fresh, field, value)
    assert (t.status, t.phase) == (TemplateStatus.LOCKED, Phase.SEAL)
    assert _stored(t)["status"] == TemplateStatus.LOCKED
    t.status = TemplateStatus.LOCKED  # the value it has: no change, allowed (as full_clean does)
    t.full_clean()
    Template.objects.filter(pk=t.pk).update(phase=Phase.ASSIGN_LEGAL_SHARED)
    t.refresh_from_db()  # a reload is allowed to bring the stored state
    assert t.phase == Phase.ASSIGN_LEGAL_SHARED


@pytest.mark.django_db
def test_a_template_starts_only_in_the_initial_state(host):
    from sealing import service

    for kwargs in ({"status": TemplateStatus.OK}, {"phase": Phase.SEAL}, {"sealed": True}):
        with pytest.raises(InvalidTransition, match="a new template starts locked/CREATE_TEMPLATE"):
            service.start(Template(name="n", host=host, vm_name="v", **kwargs))
    assert not Template.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(("status", "phase", "allowed"), [
    (TemplateStatus.OK, Phase.DONE, True),
    (TemplateStatus.FAILED, Phase.CLEANUP_FAILED, True),
    (TemplateStatus.FAILED, Phase.DONE, True),  # a delete that could not finish: deleting again retries
    (TemplateStatus.LOCKED, Phase.SEAL, False),
    (TemplateStatus.FAILED, Phase.ROLLBACK, False),  # its rollback runs and removes it
])
def test_a_delete_is_requested_only_where_lock_for_delete_is_allowed(host, status, phase, allowed):
    from sealing import service

    t = _row(host, status, phase)
    if allowed:
        op = service.request_delete(t)
        row = _stored(t)
        assert (row["status"], row["phase"], row["job_id"]) == (TemplateStatus.LOCKED, phase, op.pk)
    else:
        before = _stored(t)
        with pytest.raises(service.Refused, match="has a job running") as e:
            service.request_delete(t)
        assert e.value.status == 409
        assert _stored(t) == before
        assert not HostJob.objects.filter(action=JobAction.DELETE_TEMPLATE).exists()


# -- the flow's last move and its operation's end -------------------------------------------------------
@pytest.mark.django_db
def test_the_last_step_finishes_template_and_operation_together(host):
    from sealing import flow

    op = HostJob.create(host, JobAction.CREATE_TEMPLATE)
    op.start()
    t = _row(host, TemplateStatus.LOCKED, Phase.ASSIGN_LEGAL_SHARED)
    flow._finish(t, op, "ASSIGN_LEGAL_SHARED done in 1.0s\n", {})
    assert (_stored(t)["status"], _stored(t)["phase"], _stored(t)["sealed"]) == ("ok", "DONE", True)
    stored = HostJob.objects.get(pk=op.pk)
    assert (stored.status, stored.progress) == (JobStatus.DONE, 100)
    assert stored.log.endswith("ASSIGN_LEGAL_SHARED done in 1.0s\n")

    op = HostJob.create(host, JobAction.CREATE_TEMPLATE)
    op.start()
    t = _row(host, TemplateStatus.LOCKED, Phase.ASSIGN_LEGAL_SHARED, name="t2")
    HostJob.objects.get(pk=op.pk).cancel()  # lands just before the end
    with pytest.raises(InvalidTransition):
        flow._finish(t, op, "ASSIGN_LEGAL_SHARED done in 1.0s\n", {})
    assert (_stored(t)["status"], _stored(t)["phase"]) == ("locked", "ASSIGN_LEGAL_SHARED"), "nothing written"
    assert (t.status, t.phase) == ("locked", "ASSIGN_LEGAL_SHARED"), "the instance as the row: the rollback's start"
    assert t.allows("start_rollback")
    assert "done in" not in HostJob.objects.get(pk=op.pk).log
    assert op.log == HostJob.objects.get(pk=op.pk).log


# -- the data migration ---------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_the_migration_renames_the_old_cleanup_phase_both_ways():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before, after = [("templates", "0005_guest_os_help")], [("templates", "0006_phase_cleanup_failed")]
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    try:
        executor.migrate(before)
        old = executor.loader.project_state(before).apps
        h = old.get_model("hostjobs", "Host").objects.create(name="h", address="10.211.0.251", host_key=KEY)
        for name, status, phase in (("left", "failed", "FAILED"), ("rolling", "failed", "ROLLBACK"),
                                    ("done", "ok", "DONE")):
            old.get_model("templates", "Template").objects.create(name=name, host=h, vm_name="v", status=status,
                                                                  phase=phase)
        MigrationExecutor(connection).migrate(after)
        assert dict(Template.objects.values_list("name", "phase")) == {
            "left": "CLEANUP_FAILED", "rolling": "ROLLBACK", "done": "DONE"}
        assert dict(Template.objects.values_list("name", "status")) == {
            "left": "failed", "rolling": "failed", "done": "ok"}, "statuses are not touched"
        MigrationExecutor(connection).migrate(before)
        assert dict(Template.objects.values_list("name", "phase")) == {
            "left": "FAILED", "rolling": "ROLLBACK", "done": "DONE"}
    finally:
        MigrationExecutor(connection).migrate(latest)
