"""The Vm state machine (``templates.states``' pattern: two vocabularies, their tables, the moves).

``status`` is what a user sees of the VM (the API's ``status``): whether vmseal's work on it is done,
not whether it runs (libvirt's ``state``, read on demand):

    locked -> ok | failed     an operation runs (create or delete) -> the VM was made / it failed
    ok | failed -> locked     a delete was requested;  locked -> ok: a delete refused by the worker

``phase`` is where the create flow is, persisted so a restarted worker resumes there:

    CREATE_VM -> CREATE_DISKS -> IDENTITY -> DEFINE [-> START] -> DONE
    any step -> ROLLBACK -> (VM removed) | CLEANUP_FAILED -> ROLLBACK (the sweeper retries the clean-up)

The moves, each a ``Vm`` method doing one conditional UPDATE:

    advance(to)          locked, a step                        -> locked, the next step (not DONE)
    finish()             locked, DEFINE | START                -> ok, DONE
    start_rollback(e)    locked, a step | failed, CLEANUP_FAILED -> failed, ROLLBACK
    rollback_incomplete(e)  failed, ROLLBACK                   -> failed, CLEANUP_FAILED
    lock_for_delete(op)  ok, DONE | failed, DONE | failed, CLEANUP_FAILED -> locked (phase kept)
    delete_refused(e)    locked, DONE                          -> ok (the worker found it running, no force)
    delete_incomplete(e) locked, DONE | locked, CLEANUP_FAILED -> failed (phase kept)
"""

from django.db import models

from templates.states import ProtectedState, StateField  # noqa: F401 - the same guard as Template's


class VmStatus(models.TextChoices):
    LOCKED = "locked", "Locked"
    OK = "ok", "OK"
    FAILED = "failed", "Failed"


class VmPhase(models.TextChoices):
    CREATE_VM = "CREATE_VM"
    CREATE_DISKS = "CREATE_DISKS"
    IDENTITY = "IDENTITY"
    DEFINE = "DEFINE"
    START = "START"
    DONE = "DONE"
    ROLLBACK = "ROLLBACK"
    CLEANUP_FAILED = "CLEANUP_FAILED"


P = VmPhase
STEPS = (P.CREATE_VM, P.CREATE_DISKS, P.IDENTITY, P.DEFINE, P.START)

STATUS_TRANSITIONS = {
    VmStatus.LOCKED: {VmStatus.OK, VmStatus.FAILED},
    VmStatus.OK: {VmStatus.LOCKED},
    VmStatus.FAILED: {VmStatus.LOCKED},
}
PHASE_TRANSITIONS = {
    P.CREATE_VM: {P.CREATE_DISKS, P.ROLLBACK},
    P.CREATE_DISKS: {P.IDENTITY, P.ROLLBACK},
    P.IDENTITY: {P.DEFINE, P.ROLLBACK},
    P.DEFINE: {P.START, P.DONE, P.ROLLBACK},
    P.START: {P.DONE, P.ROLLBACK},
    P.ROLLBACK: {P.CLEANUP_FAILED},
    P.CLEANUP_FAILED: {P.ROLLBACK},
    P.DONE: set(),
}

L, OK, F = VmStatus.LOCKED, VmStatus.OK, VmStatus.FAILED
KEEP = None
MOVES = {
    "advance": ({(L, p) for p in STEPS[:-1]}, KEEP, "the next step"),
    "finish": ({(L, P.DEFINE), (L, P.START)}, OK, P.DONE),
    "start_rollback": ({(L, p) for p in STEPS} | {(F, P.CLEANUP_FAILED)}, F, P.ROLLBACK),
    "rollback_incomplete": ({(F, P.ROLLBACK)}, F, P.CLEANUP_FAILED),
    "lock_for_delete": ({(OK, P.DONE), (F, P.DONE), (F, P.CLEANUP_FAILED)}, L, KEEP),
    "delete_refused": ({(L, P.DONE)}, OK, KEEP),
    "delete_incomplete": ({(L, P.DONE), (L, P.CLEANUP_FAILED)}, F, KEEP),
}
# What a step found, recorded by the move that ends it.
FINDINGS = frozenset({"identity_appliance", "root_password_hash"})


def steps(start: bool) -> list[str]:
    """The create flow's phases in order, DONE last."""
    return [P.CREATE_VM, P.CREATE_DISKS, P.IDENTITY, P.DEFINE] + ([P.START] if start else []) + [P.DONE]


def next_phase(phase: str, start: bool) -> str:
    order = steps(start)
    return order[order.index(phase) + 1]
