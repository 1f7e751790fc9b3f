"""The audit trail: one Event per changing action (accepted or refused), never changed or deleted
through the app. Values are never recorded, only names: an update lists the fields it changed."""

from django.db import models
from django.utils import timezone


class ImmutableEvent(Exception):
    """An audit event cannot be changed or deleted."""


class Source(models.TextChoices):
    API = "api", "API"
    ADMIN = "admin", "Admin"
    CLI = "cli", "Command line"
    SYSTEM = "system", "System"


class Outcome(models.TextChoices):
    ACCEPTED = "accepted", "Accepted"
    REFUSED = "refused", "Refused"
    ERROR = "error", "Error"  # the request failed on the server (5xx)


class EventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise ImmutableEvent("audit events are never changed")

    def delete(self):
        raise ImmutableEvent("audit events are never deleted through the app")


class Event(models.Model):
    when = models.DateTimeField(default=timezone.now, db_index=True)
    # The user's id and name as they were (no foreign key: the trail outlives its users); "system" for
    # the app's own work, the OS user for the command line.
    user_id = models.IntegerField(null=True, blank=True)
    username = models.CharField(max_length=150, db_index=True)
    source = models.CharField(max_length=8, choices=Source.choices)
    action = models.CharField(max_length=64, db_index=True, help_text="<object type>.<verb>, e.g. host.create")
    object_type = models.CharField(max_length=32, blank=True, default="")
    object_id = models.CharField(max_length=64, blank=True, default="")
    object_repr = models.CharField(max_length=200, blank=True, default="")
    outcome = models.CharField(max_length=8, choices=Outcome.choices)
    reason = models.TextField(blank=True, default="", help_text="why it was refused")
    changes = models.JSONField(default=list, blank=True, help_text="names of the fields an update changed")
    request_id = models.CharField(max_length=64, blank=True, default="", db_index=True)

    objects = EventQuerySet.as_manager()

    class Meta:
        ordering = ["-when", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self):
        obj = f" {self.object_type}:{self.object_id}" if self.object_type else ""
        return f"{self.when:%Y-%m-%d %H:%M:%S} {self.username} {self.action}{obj} {self.outcome}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ImmutableEvent("audit events are never changed")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ImmutableEvent("audit events are never deleted through the app")
