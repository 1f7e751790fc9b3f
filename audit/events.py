"""Recording an action in the audit trail: the one function every entry point uses.

    from audit import events
    events.record("vm.create", vm)                                   # accepted
    events.record("vm.delete", vm, outcome="refused", reason="...")  # refused
    with events.attempt("vm.create", vm):   # accepted, or refused with the exception's text (re-raised)
        ...

Who acts, from where and the request id come from ``audit.context`` (the middleware for the API and
the admin, ``audit.cli`` for commands; ``system`` otherwise); ``user=``/``source=`` override them.
The REST API is recorded by the middleware for every POST/PUT/PATCH/DELETE of a DRF viewset, the admin
by ``audit.admin.AuditedAdmin``, the command line by ``audit.cli.audited`` commands: a view,
admin or command already covered there must not call record() again (one event per action).

Only names are recorded, never values: an update lists the fields it changed (``changes``), a reason
is the refusal's message. ``SECRET_FIELDS`` are never named with a value anywhere in the app.
"""

from __future__ import annotations

import contextlib
import logging

from audit import context
from audit.models import Event, Outcome

log = logging.getLogger("vmseal.audit")
# Object types by model (model_name -> what the trail calls it)
TYPE_NAMES = {"hostjob": "job"}
REASON_MAX = 2000


def object_type(model) -> str:
    name = model._meta.model_name
    return TYPE_NAMES.get(name, name)


def record(action: str, obj=None, *, outcome: str = Outcome.ACCEPTED, reason: str = "", changes=(),
           user=None, source: str | None = None, object_type_: str | None = None, object_id=None,
           object_repr: str | None = None) -> Event:
    """Record one action. ``obj`` (a model instance) gives the object's type, id and repr, or pass
    ``object_type_``/``object_id``/``object_repr``; ``user`` (a User) overrides the current actor's."""
    actor = context.current()
    user_id, username = (user.pk, user.get_username()) if user is not None else actor.user()
    if obj is not None:
        object_type_ = object_type_ or object_type(type(obj))
        object_id = obj.pk if object_id is None else object_id
        object_repr = str(obj) if object_repr is None else object_repr
    return Event.objects.create(
        user_id=user_id, username=username, source=source or actor.source, action=action,
        object_type=object_type_ or "", object_id="" if object_id is None else str(object_id)[:64],
        object_repr=(object_repr or "")[:200], outcome=outcome, reason=str(reason)[:REASON_MAX],
        changes=sorted(set(changes)), request_id=actor.request_id,
    )


def refusal_text(exc: BaseException) -> str:
    """A refusal's message: a ValidationError's messages by field, else the exception's text."""
    messages = getattr(exc, "message_dict", None) or getattr(exc, "detail", None)
    if isinstance(messages, dict):
        return "; ".join(f"{k}: {' '.join(map(str, v)) if isinstance(v, list | tuple) else v}"
                         for k, v in messages.items())
    if isinstance(messages, list):
        return " ".join(map(str, messages))
    return str(getattr(exc, "message", None) or exc)


@contextlib.contextmanager
def attempt(action: str, obj=None, **kwargs):
    """Record ``action`` once: accepted when the block ends, refused (with the exception's message)
    when it raises; the exception goes on."""
    try:
        yield
    except Exception as e:
        record(action, obj, outcome=Outcome.REFUSED, reason=refusal_text(e), **kwargs)
        raise
    record(action, obj, **kwargs)
