"""Emitting an event to the webhooks that asked for it:

    from webhooks import events
    events.emit("vm.created", vm, host=vm.host_id)   # data: JSON-able keyword arguments

``emit`` creates one Delivery per webhook that wants the event and enqueues each (django-q2) when the
current transaction commits: called inside the transaction that made the change, the event is sent if
and only if the change is committed. It never contacts a receiver itself and never raises (a failure is
logged): a slow or dead receiver never delays or breaks the caller's flow.

The POST's body (``payload``): ``{"id": <delivery id>, "event", "occurred": <ISO 8601>, "object":
{"type", "id", "repr"}, "data": {...}}``. Signature: see ``webhooks.tasks``.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from webhooks.models import EVENTS, Delivery, Webhook

log = logging.getLogger("vmseal.webhooks")


def payload(event: str, obj, data: dict, delivery_id) -> dict:
    obj_part = None
    if isinstance(obj, dict):  # {"type", "id", "repr"} of an object already deleted
        obj_part = obj
    elif obj is not None:
        name = obj._meta.model_name
        obj_part = {"type": {"hostjob": "job"}.get(name, name), "id": str(obj.pk) if name == "hostjob" else obj.pk,
                    "repr": str(obj)}
    return {"id": str(delivery_id), "event": event, "occurred": timezone.now().isoformat(), "object": obj_part,
            "data": data}


def emit(event: str, obj=None, **data) -> list[Delivery]:
    """Queue ``event`` about ``obj`` (a model instance, or ``{"type", "id", "repr"}`` of one deleted) for
    every active webhook that wants it; the deliveries made."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")  # a programming error, not a runtime one
    try:
        with transaction.atomic():  # a savepoint: a failure here never breaks the caller's transaction
            made = []
            for hook in Webhook.objects.filter(active=True):
                if hook.wants(event):
                    d = Delivery(webhook=hook, event=event)
                    d.payload = payload(event, obj, data, d.pk)
                    made.append(d)
            Delivery.objects.bulk_create(made)
            for d in made:
                transaction.on_commit(lambda pk=d.pk: enqueue(pk))
        return made
    except Exception:
        log.exception("webhook event %s not queued", event)
        return []


def enqueue(delivery_id) -> None:
    from django_q.tasks import async_task

    try:
        async_task("webhooks.tasks.deliver", str(delivery_id), task_name=f"webhook-{delivery_id}-0")
    except Exception:  # the broker is down: the delivery stays pending with no try (seen in the admin)
        log.exception("webhook delivery %s not enqueued", delivery_id)
