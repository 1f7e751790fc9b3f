"""Who acts, from where, under which request id: set once per entry point and read by ``events.record``.

The middleware sets it for each HTTP request (``api`` under /api/, ``admin`` under /admin/; the user is
read from the request when an event is recorded, so DRF's token authentication, which runs inside the
view, is seen); an audited management command sets ``cli`` with the OS user running it; anything else
(the qcluster's flows and sweeper) is ``system``."""

from __future__ import annotations

import contextlib
import contextvars
import re
import uuid
from dataclasses import dataclass

SYSTEM = "system"
# A client's X-Request-ID is kept if it looks like an id (letters, digits, . _ : -; at most 64), else replaced.
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


@dataclass(frozen=True)
class Actor:
    source: str
    request_id: str
    request: object | None = None  # the HttpRequest (its user is read when recording)
    username: str | None = None  # a fixed user name (the CLI's OS user)

    def user(self) -> tuple[int | None, str]:
        """(user id or None, user name) of who acts now."""
        user = getattr(self.request, "user", None)
        if user is not None and user.is_authenticated:
            return user.pk, user.get_username()
        if self.username:
            return None, self.username
        return None, "anonymous" if self.request is not None else SYSTEM


_current: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("vmseal_audit_actor", default=None)


def new_request_id(offered: str | None = None) -> str:
    if offered and REQUEST_ID.fullmatch(offered):
        return offered
    return uuid.uuid4().hex


def current() -> Actor:
    return _current.get() or Actor(SYSTEM, "")


@contextlib.contextmanager
def acting(actor: Actor):
    token = _current.set(actor)
    try:
        yield actor
    finally:
        _current.reset(token)
