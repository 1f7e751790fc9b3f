"""VM templates. A Template is made from a stopped VM on one host; each of its disks is a Volume.
Its ``phase`` is persisted so a restarted worker resumes the flow where it stopped."""

from django.db import models

from hostjobs.models import Host, HostJob
from volumes.models import Volume


class TemplateStatus(models.TextChoices):
    LOCKED = "locked", "Locked"  # an operation runs
    OK = "ok", "OK"
    FAILED = "failed", "Failed"  # visible while rolling back, or when the removal itself failed


class Phase(models.TextChoices):
    CREATE_TEMPLATE = "CREATE_TEMPLATE"
    COPY_DISKS = "COPY_DISKS"
    ASSIGN_ILLEGAL = "ASSIGN_ILLEGAL"
    SEAL = "SEAL"
    ASSIGN_LEGAL_SHARED = "ASSIGN_LEGAL_SHARED"
    DONE = "DONE"
    ROLLBACK = "ROLLBACK"
    FAILED = "FAILED"


class TemplateQuerySet(models.QuerySet):
    def with_disk_summary(self):
        """Each template's disk count and total virtual size, in the same query (lists). Correlated
        subqueries, not a JOIN + GROUP BY: the database computes them for the rows of the page only."""
        disks = TemplateDisk.objects.filter(template=models.OuterRef("pk")).order_by().values("template")
        return self.annotate(
            n_disks=models.Subquery(disks.annotate(n=models.Count("pk")).values("n")),
            size=models.Subquery(disks.annotate(s=models.Sum("volume__size")).values("s")),
        )


class Template(models.Model):
    name = models.CharField(max_length=128, unique=True)
    description = models.TextField(blank=True, default="")
    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="templates")
    vm_name = models.CharField("VM", max_length=255, help_text="a shut-off libvirt domain on the host")
    vm_uuid = models.CharField(max_length=36, blank=True, default="")
    seal = models.BooleanField("Seal template", default=False,
                               help_text="Erase machine identity with virt-sysprep (Linux guests only).")
    # Validated by sealing.options; the root password only as its hash.
    seal_options = models.JSONField(default=dict, blank=True)
    # The post-seal audit: {"passed": bool, "items": [{"item", "ok", "detail"}]}, empty until it ran.
    audit = models.JSONField(default=dict, blank=True)
    guest_os = models.CharField(max_length=255, blank=True, default="",
                                help_text="what the guest reported about itself (recorded, never trusted)")
    status = models.CharField(max_length=16, choices=TemplateStatus.choices, default=TemplateStatus.LOCKED)
    phase = models.CharField(max_length=32, choices=Phase.choices, default=Phase.CREATE_TEMPLATE)
    sealed = models.BooleanField(default=False)
    error = models.TextField(blank=True, default="")
    job = models.OneToOneField(HostJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="template")
    # Held by the worker running the flow and renewed while it waits; an expired lease on an unfinished
    # template means its worker died, and the sweeper resumes the flow. The owner token fences a worker
    # cut off past the expiry: it can no longer renew, and stops (sealing.flow.Lease).
    lease_expires = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=32, blank=True, default="", editable=False)
    created = models.DateTimeField(auto_now_add=True, db_index=True)  # the lists' default order
    updated = models.DateTimeField(auto_now=True)

    objects = TemplateQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]
        permissions = [("seal_template", "Can create sealed templates (run virt-sysprep)")]

    def __str__(self):
        return self.name


class TemplateDisk(models.Model):
    """One disk of the source VM and the template volume copied from it."""

    template = models.ForeignKey(Template, on_delete=models.CASCADE, related_name="disks")
    index = models.PositiveSmallIntegerField()
    target = models.CharField(max_length=32)
    source_path = models.CharField(max_length=1024)
    source_format = models.CharField(max_length=16)
    volume = models.OneToOneField(Volume, null=True, blank=True, on_delete=models.SET_NULL, related_name="disk")

    class Meta:
        ordering = ["index"]
        constraints = [models.UniqueConstraint(fields=["template", "index"], name="uniq_template_disk_index")]

    def __str__(self):
        return f"{self.template} disk {self.index} ({self.target})"


class IdempotencyKey(models.Model):
    """A client's Idempotency-Key for POST /api/templates/: the same key (and body) returns the same job."""

    user = models.ForeignKey("auth.User", on_delete=models.CASCADE)
    key = models.CharField(max_length=128)
    request_hash = models.CharField(max_length=64)
    job = models.ForeignKey(HostJob, null=True, blank=True, on_delete=models.CASCADE)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="uniq_idempotency_key")]

    def __str__(self):
        return f"{self.user_id}:{self.key}"
