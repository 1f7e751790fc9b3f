"""Template volumes. The host's metadata file beside each volume is the truth; a Volume row mirrors
it and changes only from what a host reported (``mirror``)."""

import posixpath
import uuid

from django.db import models

from hostjobs.models import Host
from volumes import rules


class VolumeType(models.TextChoices):
    LEAF = rules.LEAF, "Leaf"
    SHARED = rules.SHARED, "Shared"
    INTERNAL = rules.INTERNAL, "Internal"


class Legality(models.TextChoices):
    LEGAL = rules.LEGAL, "Legal"
    ILLEGAL = rules.ILLEGAL, "Illegal"


class Volume(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="volumes")
    type = models.CharField(max_length=16, choices=VolumeType.choices, default=VolumeType.LEAF)
    # ILLEGAL until the host reports the copy complete.
    legality = models.CharField(max_length=16, choices=Legality.choices, default=Legality.ILLEGAL)
    generation = models.PositiveSmallIntegerField(default=0)
    format = models.CharField(max_length=16, default="qcow2")
    size = models.BigIntegerField(default=0, help_text="virtual size in bytes")
    actual_size = models.BigIntegerField(default=0, help_text="allocated bytes on the host")
    # A thin VM disk's backing volume (vdsm's parent): a template's SHARED volume, which cannot go while
    # a volume it backs exists.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    # Derived by vmseal from the host's pool (the template pool, or the VM pool for a VM's disk) and the
    # volume id; never taken from a client.
    path = models.CharField(max_length=512, editable=False)
    # Set by a host scan (volumes.reconcile) when the host no longer has this volume, or not intact.
    error = models.TextField(blank=True, default="", help_text="why this volume is unusable, as a host scan found it")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created"]

    def __str__(self):
        return f"{self.id} ({self.type}, {self.legality}, gen {self.generation})"

    def save(self, *args, **kwargs):
        if not self.path:
            self.path = posixpath.join(self.host.pool_path, f"{self.id}.qcow2")
        super().save(*args, **kwargs)

    def meta(self) -> dict:
        return {"id": str(self.id), "type": self.type, "legality": self.legality,
                "generation": self.generation, "parent": str(self.parent_id) if self.parent_id else None}

    def mirror(self, reported: dict) -> None:
        """Take the host's metadata (and sizes when reported) as the new state of this row."""
        self.type = reported["type"]
        self.legality = reported["legality"]
        self.generation = reported["generation"]
        if "virtual_size" in reported:
            self.size = reported["virtual_size"]
            self.actual_size = reported.get("actual_size", 0)
        self.save()


class UnknownVolume(models.Model):
    """A volume a host scan found in a host's pool that no Volume row knows. Reported, never removed by
    the scan; an admin removes it explicitly (admin action, ``volumes.reconcile.remove_unknown``)."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="unknown_volumes")
    # The pool it was found in: the host's template pool or its VM pool ("" on rows found before VM
    # pools were scanned: the template pool).
    pool = models.CharField(max_length=512, blank=True, default="", editable=False)
    volume_id = models.UUIDField()
    files = models.JSONField(default=list, help_text="its files in the pool, as the scan saw them")
    meta = models.JSONField(null=True, blank=True, help_text="its metadata on the host, if readable")
    first_seen = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField()

    class Meta:
        ordering = ["host", "first_seen"]
        constraints = [models.UniqueConstraint(fields=["host", "volume_id"], name="uniq_unknown_volume")]

    def __str__(self):
        return f"{self.volume_id} on {self.host}"
