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
    # Derived by vmseal from the host's pool and the volume id; never taken from a client.
    path = models.CharField(max_length=512, editable=False)
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
                "generation": self.generation, "parent": None}

    def mirror(self, reported: dict) -> None:
        """Take the host's metadata (and sizes when reported) as the new state of this row."""
        self.type = reported["type"]
        self.legality = reported["legality"]
        self.generation = reported["generation"]
        if "virtual_size" in reported:
            self.size = reported["virtual_size"]
            self.actual_size = reported.get("actual_size", 0)
        self.save()
