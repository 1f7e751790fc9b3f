"""Event webhooks: where users want vmseal's events POSTed (Webhook), and each POST of one event to one
webhook (Delivery), with its tries. A Delivery moves only by guarded, conditional UPDATEs
(``claim``, ``succeed``, ``retry_later``, ``give_up``), so two workers never send the same try twice:

    pending -> sending -> delivered | pending (a retry is scheduled) | failed (given up after the tries)
"""

import uuid

from django.core.exceptions import ValidationError
from django.core.validators import MinLengthValidator, URLValidator
from django.db import models
from django.utils import timezone

from hostjobs.errors import InvalidTransition

# The events a webhook can ask for. vm.* are sent by the VM app.
EVENTS = {
    "template.ok": "a template was made (status ok)",
    "template.failed": "a template failed (its operation failed or was cancelled, or a delete could not finish)",
    "template.deleted": "a template and its volumes were deleted",
    "job.failed": "an operation job failed",
    "vm.created": "a VM was created from a template (status ok)",
    "vm.failed": "a VM could not be made (its operation failed or was cancelled), or a delete could not finish",
    "vm.deleted": "a VM was deleted",
}


def validate_url(value: str) -> None:
    URLValidator(schemes=["http", "https"])(value)
    from urllib.parse import urlsplit

    if urlsplit(value).username or urlsplit(value).password:
        raise ValidationError("no user name or password in the URL (the body is signed with the secret)",
                              code="invalid")


def validate_events(value) -> None:
    if not isinstance(value, list) or not value:
        raise ValidationError("a non-empty list of events", code="invalid")
    unknown = [e for e in value if not isinstance(e, str) or e not in EVENTS]
    if unknown:
        raise ValidationError(f"unknown events: {', '.join(map(str, unknown))} (known: {', '.join(EVENTS)})",
                              code="invalid")
    if len(set(value)) != len(value):
        raise ValidationError("an event is listed twice", code="invalid")


class Webhook(models.Model):
    name = models.CharField(max_length=64, unique=True)
    url = models.CharField("URL", max_length=500, validators=[validate_url],
                           help_text="http(s) URL vmseal POSTs the events to")
    events = models.JSONField(validators=[validate_events], help_text=f"some of: {', '.join(EVENTS)}")
    # Signs each POST (HMAC-SHA256). Written, never shown: not by the API, the admin, nor any log.
    secret = models.CharField(max_length=128, validators=[MinLengthValidator(16)])
    active = models.BooleanField(default=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def __repr__(self):  # never the secret
        return f"<Webhook {self.pk} {self.name}>"

    def wants(self, event: str) -> bool:
        return self.active and event in (self.events or [])


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"  # waiting for its (next) try
    SENDING = "sending", "Sending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed (given up)"


TRANSITIONS = {
    DeliveryStatus.PENDING: {DeliveryStatus.SENDING},
    DeliveryStatus.SENDING: {DeliveryStatus.DELIVERED, DeliveryStatus.PENDING, DeliveryStatus.FAILED},
}


class Delivery(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=32)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    tries = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    last_status = models.PositiveSmallIntegerField(null=True, blank=True, help_text="the receiver's HTTP status")
    created = models.DateTimeField(default=timezone.now, db_index=True)
    last_try = models.DateTimeField(null=True, blank=True)
    next_try = models.DateTimeField(null=True, blank=True)
    delivered = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        verbose_name_plural = "deliveries"
        indexes = [models.Index(fields=["status"])]

    def __str__(self):
        return f"{self.event} to {self.webhook_id} [{self.status}]"

    def _transition(self, new: str, **fields) -> None:
        old = self.status
        if new not in TRANSITIONS.get(old, ()):
            raise InvalidTransition(f"delivery {self.pk}: {old} -> {new} is not allowed")
        if not Delivery.objects.filter(pk=self.pk, status=old, tries=self.tries).update(status=new, **fields):
            self.refresh_from_db(fields=["status", "tries"])
            raise InvalidTransition(f"delivery {self.pk}: it moved to {self.status} meanwhile")
        self.status = new
        for k, v in fields.items():
            setattr(self, k, v)

    def claim(self) -> None:
        """pending -> sending, counting the try; refused if another worker has it."""
        self._transition(DeliveryStatus.SENDING, tries=self.tries + 1, last_try=timezone.now(), next_try=None)

    def succeed(self, http_status: int) -> None:
        self._transition(DeliveryStatus.DELIVERED, last_status=http_status, last_error="", delivered=timezone.now())

    def retry_later(self, error: str, http_status: int | None, at) -> None:
        self._transition(DeliveryStatus.PENDING, last_error=error[:2000], last_status=http_status, next_try=at)

    def give_up(self, error: str, http_status: int | None) -> None:
        self._transition(DeliveryStatus.FAILED, last_error=error[:2000], last_status=http_status)
