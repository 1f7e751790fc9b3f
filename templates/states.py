"""The Template state machine: two vocabularies, their transitions tables, the moves that follow them,
and the guard that keeps ``status`` and ``phase`` from being assigned anywhere else.

``status`` is what a user sees of the template (the API's ``status``):

    locked -> ok | failed     an operation runs (create or delete) -> it made the template / the template failed
    ok | failed -> locked     a delete was requested

``phase`` is where the create flow is, persisted so a restarted worker resumes there (the API's ``phase``):

    CREATE_TEMPLATE -> COPY_DISKS -> ASSIGN_ILLEGAL -> SEAL -> ASSIGN_LEGAL_SHARED -> DONE
    (seal=false: COPY_DISKS -> ASSIGN_LEGAL_SHARED)
    any step -> ROLLBACK -> (template removed) | CLEANUP_FAILED -> ROLLBACK (the sweeper retries the clean-up)

A delete moves the status only; the phase (DONE, or CLEANUP_FAILED) stays what it was. The moves, each a
``Template`` method doing one conditional UPDATE (``HostJob._transition``'s pattern):

    advance(to)          locked, a step                      -> locked, the next step (not DONE)
    finish()             locked, ASSIGN_LEGAL_SHARED         -> ok, DONE (sealed = seal)
    start_rollback(e)    locked, a step | failed, CLEANUP_FAILED -> failed, ROLLBACK (sealed = False)
    rollback_incomplete(e)  failed, ROLLBACK                 -> failed, CLEANUP_FAILED
    lock_for_delete(op)  ok, DONE | failed, DONE | failed, CLEANUP_FAILED -> locked (phase kept)
    delete_incomplete(e) locked, DONE | locked, CLEANUP_FAILED -> failed (phase kept)
    volumes_missing(e)   ok, DONE                            -> failed (phase kept; a host scan found volumes gone)

The removal of the row (rollback or delete done) is not a move: the row is gone.
"""

import contextlib

from django.db import models
from django.db.models.query_utils import DeferredAttribute

from hostjobs.errors import InvalidTransition


class TemplateStatus(models.TextChoices):
    LOCKED = "locked", "Locked"  # an operation (create or delete) runs
    OK = "ok", "OK"
    FAILED = "failed", "Failed"  # rolling back, or its volumes could not all be removed (rollback or delete)


class Phase(models.TextChoices):
    CREATE_TEMPLATE = "CREATE_TEMPLATE"
    COPY_DISKS = "COPY_DISKS"
    ASSIGN_ILLEGAL = "ASSIGN_ILLEGAL"
    SEAL = "SEAL"
    ASSIGN_LEGAL_SHARED = "ASSIGN_LEGAL_SHARED"
    DONE = "DONE"
    ROLLBACK = "ROLLBACK"  # removing what the flow made
    CLEANUP_FAILED = "CLEANUP_FAILED"  # a volume could not be removed: it stays ILLEGAL; the sweeper retries



STEPS = (Phase.CREATE_TEMPLATE, Phase.COPY_DISKS, Phase.ASSIGN_ILLEGAL, Phase.SEAL, Phase.ASSIGN_LEGAL_SHARED)

STATUS_TRANSITIONS = {
    TemplateStatus.LOCKED: {TemplateStatus.OK, TemplateStatus.FAILED},
    TemplateStatus.OK: {TemplateStatus.LOCKED, TemplateStatus.FAILED},
    TemplateStatus.FAILED: {TemplateStatus.LOCKED},
}
PHASE_TRANSITIONS = {
    Phase.CREATE_TEMPLATE: {Phase.COPY_DISKS, Phase.ROLLBACK},
    Phase.COPY_DISKS: {Phase.ASSIGN_ILLEGAL, Phase.ASSIGN_LEGAL_SHARED, Phase.ROLLBACK},
    Phase.ASSIGN_ILLEGAL: {Phase.SEAL, Phase.ROLLBACK},
    Phase.SEAL: {Phase.ASSIGN_LEGAL_SHARED, Phase.ROLLBACK},
    Phase.ASSIGN_LEGAL_SHARED: {Phase.DONE, Phase.ROLLBACK},
    Phase.ROLLBACK: {Phase.CLEANUP_FAILED},
    Phase.CLEANUP_FAILED: {Phase.ROLLBACK},
    Phase.DONE: set(),
}

L, OK, F = TemplateStatus.LOCKED, TemplateStatus.OK, TemplateStatus.FAILED
KEEP = None  # a move's target: this half of the state stays as it is
# move -> (the (status, phase) it is allowed from, its target status, its target phase)
MOVES = {
    "advance": ({(L, p) for p in STEPS[:-1]}, KEEP, "the next step"),
    "finish": ({(L, Phase.ASSIGN_LEGAL_SHARED)}, OK, Phase.DONE),
    "start_rollback": ({(L, p) for p in STEPS} | {(F, Phase.CLEANUP_FAILED)}, F, Phase.ROLLBACK),
    "rollback_incomplete": ({(F, Phase.ROLLBACK)}, F, Phase.CLEANUP_FAILED),
    "lock_for_delete": ({(OK, Phase.DONE), (F, Phase.DONE), (F, Phase.CLEANUP_FAILED)}, L, KEEP),
    "delete_incomplete": ({(L, Phase.DONE), (L, Phase.CLEANUP_FAILED)}, F, KEEP),
    "volumes_missing": ({(OK, Phase.DONE)}, F, KEEP),
}
# What a step found, recorded by the move that ends it (advance, finish, start_rollback).
FINDINGS = frozenset({"vm_uuid", "guest_os", "audit", "hardware"})


def steps(seal: bool) -> list[str]:
    """The create flow's phases in order, DONE last."""
    order = [Phase.CREATE_TEMPLATE, Phase.COPY_DISKS]
    order += [Phase.ASSIGN_ILLEGAL, Phase.SEAL] if seal else []
    return order + [Phase.ASSIGN_LEGAL_SHARED, Phase.DONE]


def next_phase(phase: str, seal: bool) -> str:
    order = steps(seal)
    return order[order.index(phase) + 1]


def check_tables(old: tuple[str, str], new: tuple[str, str], status_transitions=None, phase_transitions=None) -> None:
    """Each half of the state that changes must change as its table allows; a move changes something.
    (The tables are this module's unless given: vms.states has its own.)"""
    status_transitions = STATUS_TRANSITIONS if status_transitions is None else status_transitions
    phase_transitions = PHASE_TRANSITIONS if phase_transitions is None else phase_transitions
    if old == new:
        raise InvalidTransition(f"{old[0]}/{old[1]} -> itself is not a move")
    if old[0] != new[0] and new[0] not in status_transitions.get(old[0], ()):
        raise InvalidTransition(f"status {old[0]} -> {new[0]} is not allowed")
    if old[1] != new[1] and new[1] not in phase_transitions.get(old[1], ()):
        raise InvalidTransition(f"phase {old[1]} -> {new[1]} is not allowed")


# -- the guard ------------------------------------------------------------------------------------------
class ProtectedState(AttributeError):
    """``status`` or ``phase`` assigned outside a move (django-fsm's ``protected=True``)."""


WRITING = "_template_state_writing"  # set in the instance's __dict__ while a move or a reload writes


class GuardedState(DeferredAttribute):
    """Lets Django set the field while it builds the instance (``Template(...)``, ``objects.create``, a
    row loaded from the database) and while a move or ``refresh_from_db`` writes; any other assignment
    that changes the value raises ProtectedState."""

    def __set__(self, instance, value):
        name, data = self.field.attname, instance.__dict__
        if name in data:
            allowed = data[name] == value or data.get(WRITING)
        else:
            allowed = instance._state.adding or data.get(WRITING)  # being built, or a deferred field loaded
        if not allowed:
            raise ProtectedState(f"{type(instance).__name__}.{name} is moved only by its transitions "
                                 f"(advance, finish, start_rollback, ...), not assigned")
        data[name] = value


class StateField(models.CharField):
    """A CharField whose attribute only the moves change. Migrations see a plain CharField."""

    descriptor_class = GuardedState

    def deconstruct(self):
        name, _, args, kwargs = super().deconstruct()
        return name, "django.db.models.CharField", args, kwargs


class GuardedState:
    """A model whose ``status`` and ``phase`` move only by ``_move`` (a conditional UPDATE checked against
    its MOVES and tables); Template and Vm share it. Subclasses set ``state_label`` ("template", "VM"),
    ``state_moves`` and, for other tables than this module's, ``state_tables`` (status, phase)."""

    state_label = "row"
    state_moves: dict = {}
    state_tables: tuple = (None, None)

    @contextlib.contextmanager
    def _writing_state(self):
        self.__dict__[WRITING] = True
        try:
            yield
        finally:
            self.__dict__.pop(WRITING, None)

    def refresh_from_db(self, *args, **kwargs):
        with self._writing_state():
            super().refresh_from_db(*args, **kwargs)

    def allows(self, move: str) -> bool:
        """Whether ``move`` is allowed from this instance's (status, phase)."""
        return (self.status, self.phase) in self.state_moves[move][0]

    def _move(self, move: str, *, status: str | None = None, phase: str | None = None, **fields) -> None:
        """Move to (status, phase) if the stored row is where ``move`` is allowed from, and write
        ``fields`` with it. The conditional UPDATE makes the check and the write one step, so two
        workers cannot both move the same row; the loser raises InvalidTransition and writes nothing."""
        from django.utils import timezone

        from hostjobs.errors import InvalidTransition

        who = f"{self.state_label} {self.pk} ({self.name})"
        old = (self.status, self.phase)
        new = (status or old[0], phase or old[1])
        if not self.allows(move):
            allowed = ", ".join(sorted(f"{s}/{p}" for s, p in self.state_moves[move][0]))
            raise InvalidTransition(f"{who}: {move} is not allowed from {old[0]}/{old[1]} (only from {allowed})")
        try:
            check_tables(old, new, *self.state_tables)
        except InvalidTransition as e:
            raise InvalidTransition(f"{who}: {move}: {e}") from None
        fields["updated"] = timezone.now()
        model = type(self)
        if not model.objects.filter(pk=self.pk, status=old[0], phase=old[1]).update(
                status=new[0], phase=new[1], **fields):
            try:
                self.refresh_from_db(fields=["status", "phase"])
            except model.DoesNotExist:
                raise InvalidTransition(f"{who}: {move}: removed meanwhile") from None
            raise InvalidTransition(f"{who}: {move}: it moved to {self.status}/{self.phase} meanwhile")
        with self._writing_state():
            self.status, self.phase = new
        for k, v in fields.items():
            setattr(self, k, v)
