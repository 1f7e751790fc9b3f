"""VM templates. A Template is made from a stopped VM on one host; each of its disks is a Volume.

Its ``status`` and ``phase`` move only through the methods below (``advance``, ``finish``,
``start_rollback``, ``rollback_incomplete``, ``lock_for_delete``, ``delete_incomplete``), each one
conditional UPDATE that refuses a move its row is not in a state for (``templates.states`` has the
tables); assigning either attribute raises. The ``phase`` is persisted so a restarted worker resumes
the flow where it stopped."""


from django.db import models

from hostjobs.errors import InvalidTransition
from hostjobs.models import Host, HostJob
from templates import states
from templates.states import Phase, TemplateStatus
from volumes.models import Volume


class TemplateQuerySet(models.QuerySet):
    def with_disk_summary(self):
        """Each template's disk count and total virtual size, in the same query (lists). Correlated
        subqueries, not a JOIN + GROUP BY: the database computes them for the rows of the page only."""
        disks = TemplateDisk.objects.filter(template=models.OuterRef("pk")).order_by().values("template")
        return self.annotate(
            n_disks=models.Subquery(disks.annotate(n=models.Count("pk")).values("n")),
            size=models.Subquery(disks.annotate(s=models.Sum("volume__size")).values("s")),
        )


class Template(states.GuardedState, models.Model):
    state_label, state_moves = "template", states.MOVES
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
    status = states.StateField(max_length=16, choices=TemplateStatus.choices, default=TemplateStatus.LOCKED)
    phase = states.StateField(max_length=32, choices=Phase.choices, default=Phase.CREATE_TEMPLATE)
    sealed = models.BooleanField(default=False)
    # The source VM's domain XML without its identity and state (templates.hardware.scrub): what a VM made from
    # this template is built from. Templates made before it was recorded have none.
    hardware = models.TextField(blank=True, default="", editable=False)
    error = models.TextField(blank=True, default="")
    job = models.OneToOneField(HostJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="template")
    # Held by the worker running the flow and renewed while it waits; an expired lease on an unfinished
    # template means its worker died, and the sweeper resumes the flow. The owner token fences a worker
    # cut off past the expiry: it can no longer renew, and stops (sealing.lease.Lease).
    lease_expires = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=32, blank=True, default="", editable=False)
    created = models.DateTimeField(auto_now_add=True, db_index=True)  # the lists' default order
    updated = models.DateTimeField(auto_now=True)

    objects = TemplateQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]
        permissions = [("seal_template", "Can create sealed templates (run virt-sysprep)")]
        # The list's default order with its tie-break (templates.api list): a page is read off this index,
        # without sorting the rows before its offset.
        indexes = [models.Index(fields=["-created", "-id"], name="template_list_order")]

    def __str__(self):
        return self.name

    # -- guarded transitions (templates.states.GuardedState, this module's tables) ----------------------

    @staticmethod
    def _findings(found: dict) -> dict:
        unknown = set(found) - states.FINDINGS
        if unknown:
            raise ValueError(f"not something a step records: {sorted(unknown)}")
        return found

    def check_new(self) -> None:
        """A template starts unsaved, locked in CREATE_TEMPLATE and not sealed (what the flow's first
        step expects); anything else is refused."""
        if self.pk is not None or (self.status, self.phase, self.sealed) != (
                TemplateStatus.LOCKED, Phase.CREATE_TEMPLATE, False):
            raise InvalidTransition(f"template {self.name!r} cannot start: a new template starts "
                                    f"{TemplateStatus.LOCKED}/{Phase.CREATE_TEMPLATE}, not sealed")

    def advance(self, to: str, **found) -> None:
        """A step ended: on to the flow's next step ``to``, recording what the step found (``vm_uuid``,
        ``guest_os``, ``audit``). DONE is reached by finish()."""
        if self.allows("advance") and to != states.next_phase(self.phase, self.seal):
            raise InvalidTransition(f"template {self.pk} ({self.name}): advance {self.phase} -> {to} is not "
                                    f"the next step of a {'sealed' if self.seal else 'plain'} template")
        self._move("advance", phase=to, **self._findings(found))

    def finish(self, **found) -> None:
        """The last step ended: the template is ok (and sealed if it was sealed)."""
        self._move("finish", status=TemplateStatus.OK, phase=Phase.DONE, sealed=self.seal, **self._findings(found))

    def start_rollback(self, error: str, **found) -> None:
        """The operation failed or was cancelled in a step (or a clean-up that could not finish is
        retried): the template is failed and its rollback begins. ``found``: what the failed step read."""
        self._move("start_rollback", status=TemplateStatus.FAILED, phase=Phase.ROLLBACK, error=error, sealed=False,
                   **self._findings(found))

    def rollback_incomplete(self, error: str) -> None:
        """Some volumes could not be removed: they stay ILLEGAL and the sweeper retries the clean-up."""
        self._move("rollback_incomplete", phase=Phase.CLEANUP_FAILED, error=error)

    def lock_for_delete(self, job: HostJob) -> None:
        """A delete was requested: the template is locked by its delete operation ``job``."""
        self._move("lock_for_delete", status=TemplateStatus.LOCKED, job=job)

    def volumes_missing(self, error: str) -> None:
        """A host scan found volumes of this ok template gone from its host: it is failed (deleting it
        removes what is left)."""
        self._move("volumes_missing", status=TemplateStatus.FAILED, error=error)

    def delete_incomplete(self, error: str) -> None:
        """A delete could not remove every volume: the template stays, failed; deleting it again retries."""
        self._move("delete_incomplete", status=TemplateStatus.FAILED, error=error)


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
