"""Request ids, the actor of each request, and the API's audit events.

Every response carries ``X-Request-ID``: the client's own if it sent a sane one (``context.REQUEST_ID``),
else a new one; events recorded while the request runs carry it.

Every POST/PUT/PATCH/DELETE handled by a DRF viewset under /api/ is recorded here, once, after the view:
``<object type>.<verb>`` (create, update, delete, or the viewset action's name, e.g. ``job.cancel``),
the user DRF authenticated, the object (the URL's, the created one's ``id``, or the ``target`` of the
operation job a 202 returns), and the outcome by status: 2xx/3xx accepted, 4xx refused with the
answer's message (401, no identity, is not recorded), 5xx error. Updates list the request's field
names, never their values."""

from __future__ import annotations

import json

from django.http import HttpRequest

from audit import context, events
from audit.models import Outcome

VERBS = {"create": "create", "update": "update", "partial_update": "update", "destroy": "delete"}
SAFE = ("GET", "HEAD", "OPTIONS", "TRACE")


class _Pending:
    def __init__(self, action, model, pk, repr_, changes):
        self.action, self.model, self.pk, self.repr, self.changes = action, model, pk, repr_, changes


def _source(path: str) -> str | None:
    if path.startswith("/api/"):
        return "api"
    if path.startswith("/admin/"):
        return "admin"
    return None


def _field_names(request: HttpRequest) -> list[str]:
    """The names of a JSON or urlencoded body's fields (read before the view; the body stays readable)."""
    try:
        if request.content_type == "application/json":
            data = json.loads(request.body or b"{}")
        elif request.content_type == "application/x-www-form-urlencoded":
            data = request.POST
        else:
            return []
    except Exception:  # an unreadable body: the view refuses it, and the event says so
        return []
    return sorted(str(k) for k in data) if hasattr(data, "keys") else []


class AuditMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        rid = context.new_request_id(request.headers.get("X-Request-ID"))
        request.request_id = rid
        source = _source(request.path_info)
        with context.acting(context.Actor(source or "system", rid, request=request)):
            response = self.get_response(request)
            pending = getattr(request, "_audit_pending", None)
            if pending is not None:
                self._record(request, response, pending)
        response["X-Request-ID"] = rid
        return response

    def process_view(self, request, view_func, view_args, view_kwargs):
        cls, actions = getattr(view_func, "cls", None), getattr(view_func, "actions", None)
        if request.method in SAFE or not request.path_info.startswith("/api/") or not actions:
            return None
        verb = actions.get(request.method.lower())
        queryset = getattr(cls, "queryset", None)
        if verb is None or queryset is None:
            return None
        model = queryset.model
        pk = view_kwargs.get("pk")
        obj = model._default_manager.filter(pk=pk).first() if pk is not None else None
        changes = _field_names(request) if verb in ("update", "partial_update") else []
        request._audit_pending = _Pending(f"{events.object_type(model)}.{VERBS.get(verb, verb)}", model, pk,
                                          str(obj) if obj is not None else None, changes)
        return None

    def _record(self, request, response, p: _Pending) -> None:
        status = response.status_code
        if status == 401:
            return
        data = getattr(response, "data", None)
        pk = p.pk
        if pk is None and isinstance(data, dict):
            target = str(data.get("target") or "")
            kind, _, target_id = target.partition(":")
            if status == 202 and kind == events.object_type(p.model) and target_id:
                pk = target_id
            elif status == 201 and data.get("id") is not None:
                pk = data["id"]
        repr_ = p.repr
        if repr_ is None and pk is not None:
            obj = p.model._default_manager.filter(pk=pk).first()
            repr_ = str(obj) if obj is not None else ""
        if status < 400:
            outcome, reason = Outcome.ACCEPTED, ""
        elif status < 500:
            outcome, reason = Outcome.REFUSED, _reason(data, status)
        else:
            outcome, reason = Outcome.ERROR, f"server error ({status})"
        events.record(p.action, outcome=outcome, reason=reason, changes=p.changes if status < 400 else (),
                      object_type_=events.object_type(p.model), object_id=pk, object_repr=repr_ or "")


def _reason(data, status: int) -> str:
    if isinstance(data, dict):
        detail = data.get("detail")
        if isinstance(detail, str) and len(data) <= 3:
            return detail
        return "; ".join(f"{k}: {_flat(v)}" for k, v in data.items() if k not in ("status",))
    if data is not None:
        return _flat(data)
    return f"refused ({status})"


def _flat(v) -> str:
    if isinstance(v, list | tuple):
        return " ".join(_flat(x) for x in v)
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_flat(x)}" for k, x in v.items())
    return str(v)
