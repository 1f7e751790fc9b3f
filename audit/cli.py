"""Management commands recorded in the audit trail: ``audited(Command, action, find)`` subclasses a
command so that running it (``manage.py``, ``call_command``) records ``action`` once, as the OS user
running it, source ``cli``: accepted when it ends, refused with its error (a CommandError) otherwise.
``find(options)`` returns the object the command acted on (looked up after it ran) or None.

An app that may import audit wraps its own commands (sealing's template_create); for hostjobs, which
imports nothing of audit, audit/management/commands/ holds the audited versions of its commands, which
Django runs instead because ``audit`` comes before hostjobs in INSTALLED_APPS."""

from __future__ import annotations

import getpass

from audit import context, events


def os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no name for this uid
        import os

        return f"uid {os.getuid()}"


def audited(base, action: str, find, *, object_type: str):
    class Command(base):
        def execute(self, *args, **options):
            actor = context.Actor("cli", context.new_request_id(), username=os_user())
            with context.acting(actor):
                try:
                    out = super().execute(*args, **options)
                except Exception as e:
                    obj = _safe_find(find, options)
                    events.record(action, obj, outcome="refused", reason=events.refusal_text(e),
                                  object_type_=object_type, object_repr=None if obj else _named(options))
                    raise
                obj = _safe_find(find, options)
                events.record(action, obj, object_type_=object_type, object_repr=None if obj else _named(options))
                return out

    Command.__doc__ = base.__doc__
    return Command


def _named(options) -> str:
    return str(options.get("name") or options.get("host") or "")


def _safe_find(find, options):
    try:
        return find(options)
    except Exception:
        return None
