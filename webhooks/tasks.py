"""Delivering webhook events (django-q2 tasks).

One try is one POST of the delivery's JSON body, with the headers of the hosts' callbacks
(``hostjobs.callbacks.sign``):

    X-Vmseal-Event: template.ok
    X-Vmseal-Delivery: <delivery id>      (the same on every try: a receiver can drop repeats)
    X-Vmseal-Timestamp: <unix seconds of this try>
    X-Vmseal-Nonce: <delivery id>
    X-Vmseal-Signature: hex HMAC-SHA256(secret, "<timestamp>.<nonce>." + body)

A 2xx answer delivers it. Anything else (another status, a refused connection, a timeout of
VMSEAL_WEBHOOK_TIMEOUT seconds; redirects are not followed) is a failed try: after try n (n <
VMSEAL_WEBHOOK_TRIES) the next one is scheduled VMSEAL_WEBHOOK_BACKOFF * 2**(n-1) seconds later (a
django-q2 schedule: no worker waits meanwhile; django-q2's scheduler runs about every 30 s, so a retry
is due no earlier than that); after the last try the delivery is failed (given up) with its last error.
Defaults: 6 tries, 60 s backoff: retries after 1, 2, 4, 8 and 16 minutes.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import urllib.error
import urllib.request
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from hostjobs.callbacks import sign
from hostjobs.errors import InvalidTransition
from webhooks.models import Delivery, DeliveryStatus

log = logging.getLogger("vmseal.webhooks")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a 3xx is a failed try, never followed elsewhere


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


def body_of(delivery: Delivery) -> bytes:
    return json.dumps(delivery.payload, sort_keys=True, separators=(",", ":")).encode()


def headers_of(delivery: Delivery, body: bytes, ts: str) -> dict:
    nonce = str(delivery.pk)
    return {"Content-Type": "application/json", "User-Agent": "vmseal-webhooks",
            "X-Vmseal-Event": delivery.event, "X-Vmseal-Delivery": nonce, "X-Vmseal-Timestamp": ts,
            "X-Vmseal-Nonce": nonce, "X-Vmseal-Signature": sign(delivery.webhook.secret, body, ts, nonce)}


def post(delivery: Delivery) -> tuple[int | None, str]:
    """One POST: (HTTP status or None, error text; empty when delivered)."""
    body = body_of(delivery)
    req = urllib.request.Request(delivery.webhook.url, data=body, method="POST",
                                 headers=headers_of(delivery, body, str(int(time.time()))))
    try:
        with _opener.open(req, timeout=settings.VMSEAL_WEBHOOK_TIMEOUT) as r:
            return r.status, ""
    except urllib.error.HTTPError as e:
        text = e.read(200).decode(errors="replace").strip()
        return e.code, f"HTTP {e.code}" + (f": {text}" if text else "")
    except (OSError, ValueError) as e:  # refused, unreachable, timed out, a bad answer
        return None, f"{type(e).__name__}: {getattr(e, 'reason', None) or e}"


def deliver(delivery_id: str) -> str:
    """Make one try of a pending delivery; schedule the next or give up. Returns the new status."""
    d = Delivery.objects.select_related("webhook").filter(pk=delivery_id).first()
    if d is None or d.status != DeliveryStatus.PENDING:
        return d.status if d else "gone"
    try:
        d.claim()
    except InvalidTransition:  # another worker has it
        return d.status
    status, error = post(d)
    if 200 <= (status or 0) < 300:
        d.succeed(status)
        return d.status
    tries = settings.VMSEAL_WEBHOOK_TRIES
    if d.tries >= tries:
        d.give_up(f"given up after {d.tries} tries; last: {error}", status)
        log.warning("webhook %s: %s delivery %s given up after %s tries: %s", d.webhook.name, d.event, d.pk,
                    d.tries, error)
        return d.status
    at = timezone.now() + timedelta(seconds=settings.VMSEAL_WEBHOOK_BACKOFF * 2 ** (d.tries - 1))
    d.retry_later(error, status, at)
    _schedule(d, at)
    return d.status


def _schedule(d: Delivery, at) -> None:
    from django_q.models import Schedule

    Schedule.objects.create(name=f"webhook-{d.pk}-{d.tries}-{secrets.token_hex(3)}", func="webhooks.tasks.deliver",
                            args=repr(str(d.pk)), schedule_type=Schedule.ONCE, repeats=-1, next_run=at)
