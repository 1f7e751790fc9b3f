"""``POST /api/callbacks/``: notifications pushed by hosts (the job runner on a job's end, the libvirt
hooks on daemon and domain events).

Each is signed with the host's secret: ``X-Vmseal-Signature = HMAC-SHA256(secret, "<ts>.<nonce>." + body)``
with ``X-Vmseal-Timestamp`` (unix seconds, at most MAX_SKEW old or ahead) and a one-time
``X-Vmseal-Nonce``. Unsigned, wrongly signed, stale, replayed, or about another host's job: refused,
and nothing changes. Accepted notifications are idempotent. Accepted nonces are kept until their
timestamps are refused anyway (``hostjobs.tasks.forget_old_nonces``, on its own schedule).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import time

import django.dispatch
from django.db import IntegrityError, transaction
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from hostjobs import runner
from hostjobs.models import CallbackNonce, Host, HostJob

log = logging.getLogger("vmseal.callbacks")
MAX_SKEW = 300
MAX_BODY = 64 * 1024
_DECOY_SECRET = secrets.token_hex(32)

# Sent for libvirt hook events: sender=Host, event=dict(kind, domain, op, subop). The flow (sealing)
# listens, so hostjobs does not need to know what a template is.
host_event = django.dispatch.Signal()
# Sent once per notification answered: sender=Host, accepted (bool), reason (accepted: the kind, "job",
# "domain" or "daemon"; refused: why, one of REFUSALS). The metrics app counts them.
callback_answered = django.dispatch.Signal()
REFUSALS = ("too_large", "not_signed", "stale", "replayed", "no_such_job", "unknown_kind")


def sign(secret: str, body: bytes, ts: str, nonce: str) -> str:
    return hmac.new(secret.encode(), f"{ts}.{nonce}.".encode() + body, hashlib.sha256).hexdigest()


class _Refusal(Exception):
    def __init__(self, status: int, why: str, reason: str):
        super().__init__(why)
        self.status, self.why, self.reason = status, why, reason


TIMESTAMP = re.compile(r"[0-9]{1,12}")
NONCE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
SIGNATURE = re.compile(r"[0-9a-f]{64}")
# One answer for every notification that no known host signed (malformed signature, unknown host,
# wrong signature): the endpoint does not tell which host ids exist.
NOT_SIGNED = "not signed by a known host"


def _sender(body: bytes) -> tuple[dict, Host | None]:
    """The notification and the host it names (None: not JSON, no host, no such host)."""
    try:
        payload = json.loads(body)
        return payload, Host.objects.get(pk=int(payload["host"]))
    except (ValueError, KeyError, TypeError, OverflowError, Host.DoesNotExist):
        return {}, None


@csrf_exempt
@require_POST
def callback(request):
    try:
        kind, answer = _take(request)
    except _Refusal as e:
        callback_answered.send(sender=Host, accepted=False, reason=e.reason)
        return JsonResponse({"detail": e.why}, status=e.status)
    callback_answered.send(sender=Host, accepted=True, reason=kind)
    return JsonResponse(answer)


def _take(request) -> tuple[str, dict]:
    """The notification's kind and the answer to it, or _Refusal."""
    body = request.body
    if len(body) > MAX_BODY:
        raise _Refusal(413, "body too large", "too_large")
    ts = request.headers.get("X-Vmseal-Timestamp", "")
    nonce = request.headers.get("X-Vmseal-Nonce", "")
    sig = request.headers.get("X-Vmseal-Signature", "")
    # ASCII only, and of the shapes sign() makes: anything else (non-ASCII, other digits) is unsigned
    if not (TIMESTAMP.fullmatch(ts) and NONCE.fullmatch(nonce) and SIGNATURE.fullmatch(sig)):
        raise _Refusal(401, NOT_SIGNED, "not_signed")
    payload, host = _sender(body)
    # an unknown host costs the same HMAC as a known one, and gets the same answer as a bad signature
    expected = sign(host.callback_secret if host else _DECOY_SECRET, body, ts, nonce)
    if not hmac.compare_digest(expected, sig) or host is None:
        raise _Refusal(401, NOT_SIGNED, "not_signed")
    if abs(time.time() - int(ts)) > MAX_SKEW:
        raise _Refusal(401, "stale timestamp", "stale")
    try:
        with transaction.atomic():
            CallbackNonce.objects.create(host=host, nonce=nonce)
    except IntegrityError:
        raise _Refusal(409, "replayed", "replayed") from None
    kind = payload.get("kind")
    if kind == "job":
        try:
            job = HostJob.objects.select_related("host").get(pk=payload.get("job"), host=host)
        except (HostJob.DoesNotExist, ValueError, TypeError, Exception):
            raise _Refusal(404, "no such job on this host", "no_such_job") from None
        runner.apply_state(job, {k: payload.get(k) for k in ("status", "error", "exit_code", "result", "log",
                                                             "log_offset", "log_complete") if k in payload})
        return kind, {"ok": True, "status": HostJob.objects.get(pk=job.pk).status}
    if kind in ("domain", "daemon"):
        log.info("host %s: %s event %s", host, kind, {k: payload.get(k) for k in ("domain", "op", "subop")})
        host_event.send(sender=Host, host=host, event=payload)
        return kind, {"ok": True}
    raise _Refusal(400, "unknown kind", "unknown_kind")
