"""Idempotency-Key for POST /api/templates/ (Stripe's semantics, simplified).

The first request with a key claims it (a unique row, so two concurrent requests cannot both start);
once the operation started, the key points at its job. A retry with the same key and body gets that
job; the same key with another body is a 422; a retry while the first is still being accepted is a
409. A request that did not start an operation (any 4xx or 5xx) frees its key, so the client can
correct and retry.
"""

from django.db import IntegrityError, transaction
from rest_framework import status
from rest_framework.exceptions import APIException

from templates.models import IdempotencyKey


class KeyConflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "idempotency_in_progress"


class KeyMismatch(APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_code = "idempotency_key_reused"


def claim(user, key: str, request_hash: str):
    """(claim, None) for a new key; (None, job) for a completed retry."""
    try:
        with transaction.atomic():
            return IdempotencyKey.objects.create(user=user, key=key, request_hash=request_hash), None
    except IntegrityError:
        pass
    existing = IdempotencyKey.objects.select_related("job").get(user=user, key=key)
    if existing.request_hash != request_hash:
        raise KeyMismatch({"Idempotency-Key": ["this key was used for a different request"]})
    if existing.job is None:
        raise KeyConflict({"Idempotency-Key": ["a request with this key is still being accepted; retry"]})
    return None, existing.job


def complete(claimed, job) -> None:
    if claimed is not None:
        IdempotencyKey.objects.filter(pk=claimed.pk).update(job=job)


def release(claimed) -> None:
    if claimed is not None:
        IdempotencyKey.objects.filter(pk=claimed.pk, job__isnull=True).delete()
