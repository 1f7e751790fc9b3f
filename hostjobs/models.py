"""Hosts and host jobs.

A HostJob is one unit of asynchronous work on a host, in vdsm's sense: a *storage* job touches one
volume (copy, update_volume, delete), a *virt* job works on all the disks of a template (seal). The
*operation* job is the parent a client follows: it stays non-terminal until the whole flow,
rollback included, has ended. Status changes go through guarded transitions (vdsm jobs.py):

    pending -> running -> done | failed;  pending -> aborted;  running -> aborting -> aborted
    pending -> failed: a job its host never accepted (unreachable, refused) - so none stays pending

Three methods move a job: ``start()``; ``cancel(reason)``, which branches on the status as vdsm's
``Job.abort()`` does (pending: aborted at once; running: aborting until its worker has stopped it;
ended, aborting, or a delete: refused); and ``end(status, error, code)``, netbox's ``terminate()``,
which writes the status and its error in one conditional UPDATE: the first end wins, a later one is
refused and writes nothing. ``abort_requested()`` tells a worker that a cancel has reached its job.
"""

import secrets
import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from hostjobs import validators as hv
from hostjobs.errors import HostInUse, InvalidTransition, NotCancellable


def _new_secret() -> str:
    return secrets.token_hex(32)


class Host(models.Model):
    name = models.CharField(max_length=64, unique=True, validators=[hv.validate_name])
    address = models.GenericIPAddressField(help_text="IP address of the host's sshd", validators=[hv.validate_address])
    port = models.PositiveIntegerField(default=22, validators=[MinValueValidator(1), MaxValueValidator(65535)])
    ssh_user = models.CharField(max_length=32, default="root", validators=[hv.validate_ssh_user],
                                help_text="A POSIX user name (letters, digits, '.', '_', '-').")
    host_key = models.TextField(
        validators=[hv.validate_host_key],
        help_text="The host's SSH public key line (e.g. from /etc/ssh/ssh_host_ed25519_key.pub). "
        "Pinned: a host presenting another key is refused."
    )
    pool_path = models.CharField(
        max_length=255,
        default="/var/lib/vmseal/templates",
        validators=[hv.validate_pool_path],
        help_text="A dedicated directory for the libvirt dir pool holding template volumes (absolute, normalised, "
        "not a system directory); created on first use, made root's with mode 0711. Fixed while the host has volumes.",
    )
    vm_pool_path = models.CharField(
        "VM pool path",
        max_length=255,
        default="/var/lib/vmseal/vms",
        db_default="/var/lib/vmseal/vms",  # rows written by code of an older schema get it too
        validators=[hv.validate_pool_path],
        help_text="A dedicated directory for the disks and seed ISOs of VMs made from templates (absolute, "
        "normalised, not a system directory, not the template pool); made 0700 on first use. Fixed while the "
        "host has VM volumes.",
    )
    guestfs_backend_settings = models.CharField(
        max_length=128,
        blank=True,
        default="",
        validators=[hv.validate_guestfs_backend_settings],
        help_text="LIBGUESTFS_BACKEND_SETTINGS on this host, e.g. force_tcg where KVM is unavailable.",
    )
    max_parallel_seals = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="virt-sysprep runs at once on this host (each boots an appliance: about one CPU core and "
        "1 GiB while it runs); blank: the VMSEAL_MAX_PARALLEL_SEALS setting. More wait for a slot.",
    )
    seal_timeout = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(60)],
        help_text="Seconds a seal may take on this host before it is ended and rolled back (a hung appliance, "
        "e.g. its pool filled up); blank: the VMSEAL_SEAL_TIMEOUT setting.",
    )
    copy_rate_limit = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Bytes per second a disk copy may read (qemu-img convert -r); blank: no limit."
    )
    callback_url = models.CharField(
        max_length=255, blank=True, default="", validators=[hv.validate_callback_url],
        help_text="Where this host's job runner and libvirt hooks POST their notifications (http or https); "
        "blank: the VMSEAL_CALLBACK_URL setting. Without either, jobs complete by polling only.",
    )
    sysprep_operations = models.JSONField(
        default=dict, blank=True, editable=False,
        help_text="virt-sysprep --list-operations of this host ({name: enabled by default}), read on first use.",
    )
    last_check = models.JSONField(default=dict, blank=True, editable=False,
                                  help_text="what the last host check found (host_check / the admin action)")
    last_checked = models.DateTimeField(null=True, blank=True, editable=False)
    # Signs the host's notifications (HMAC-SHA256). Never shown by the API or the admin.
    callback_secret = models.CharField(max_length=64, default=_new_secret, editable=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def clean(self):
        from django.core.exceptions import ValidationError

        from hostjobs.transport import parse_host_key

        try:
            self.host_key = " ".join(parse_host_key(self.host_key))  # stored as "<type> <base64>"
        except ValueError:
            pass  # the field's validator says why
        a, b = self.pool_path or "", self.vm_pool_path or ""
        try:  # each alone is its field validator's to refuse
            hv.validate_pool_path(a)
            hv.validate_pool_path(b)
        except ValidationError:
            a = b = ""
        if a and b and (a == b or a.startswith(b + "/") or b.startswith(a + "/")):
            raise ValidationError({"vm_pool_path": ValidationError(
                "the VM pool must be its own directory, neither the template pool nor inside or above it",
                code="overlap")})
        try:
            self.check_pool_path_change()
        except HostInUse as e:
            raise ValidationError({e.field: ValidationError(e.message, code=e.code)}) from None

    def check_pool_path_change(self) -> None:
        """The pool directory is where the host's volumes are: it cannot move while there are any."""
        if self.pk is None:
            return
        stored = Host.objects.filter(pk=self.pk).values("pool_path", "vm_pool_path").first()
        if stored is None:
            return
        for name in ("pool_path", "vm_pool_path"):
            moved = stored[name] != getattr(self, name)
            if moved and self.volumes.filter(path__startswith=stored[name] + "/").exists():
                raise HostInUse(f"{name} cannot change while host {self.name} has volumes in {stored[name]}",
                                field=name)

    def check_deletable(self) -> None:
        """A host is deleted only once nothing refers to it: its templates, volumes and jobs go first."""
        held = []
        for rel in self._meta.related_objects:
            if rel.on_delete is models.PROTECT:
                n = rel.related_model._default_manager.filter(**{rel.field.name: self}).count()
                if n:
                    meta = rel.related_model._meta
                    held.append(f"{n} {meta.verbose_name if n == 1 else meta.verbose_name_plural}")
        if held:
            raise HostInUse(f"host {self.name} still has {', '.join(held)}: delete them first")

    @property
    def libvirt_uri(self) -> str:
        """Every component quoted: a user name or address never adds to the URI's query (``command=``)."""
        from urllib.parse import quote

        address = quote(self.address, safe=".:")
        if ":" in address:
            address = f"[{address}]"
        return f"qemu+ssh://{quote(self.ssh_user, safe='')}@{address}:{int(self.port)}/system"

    @property
    def seal_limit(self) -> int:
        return self.max_parallel_seals or settings.VMSEAL_MAX_PARALLEL_SEALS


class JobKind(models.TextChoices):
    OPERATION = "operation", "Operation"
    STORAGE = "storage", "Storage"
    VIRT = "virt", "Virt"


class JobAction(models.TextChoices):
    CREATE_TEMPLATE = "create_template", "Create template"
    DELETE_TEMPLATE = "delete_template", "Delete template"
    COPY = "copy", "Copy volume"
    UPDATE_VOLUME = "update_volume", "Update volume"
    DELETE = "delete", "Delete volume"
    SEAL = "seal", "Seal"
    CREATE_VM = "create_vm", "Create VM"
    DELETE_VM = "delete_vm", "Delete VM"
    CLONE = "clone", "Clone volume"
    CUSTOMIZE = "customize", "Customize"


ACTION_KIND = {
    JobAction.CREATE_TEMPLATE: JobKind.OPERATION,
    JobAction.DELETE_TEMPLATE: JobKind.OPERATION,
    JobAction.COPY: JobKind.STORAGE,
    JobAction.UPDATE_VOLUME: JobKind.STORAGE,
    JobAction.DELETE: JobKind.STORAGE,
    JobAction.SEAL: JobKind.VIRT,
    JobAction.CREATE_VM: JobKind.OPERATION,
    JobAction.DELETE_VM: JobKind.OPERATION,
    JobAction.CLONE: JobKind.STORAGE,
    JobAction.CUSTOMIZE: JobKind.VIRT,
}


class JobStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    ABORTING = "aborting", "Aborting"
    ABORTED = "aborted", "Aborted"


TERMINAL = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.ABORTED})
TRANSITIONS = {
    JobStatus.PENDING: {JobStatus.RUNNING, JobStatus.ABORTED, JobStatus.FAILED},
    JobStatus.RUNNING: {JobStatus.DONE, JobStatus.FAILED, JobStatus.ABORTING},
    JobStatus.ABORTING: {JobStatus.ABORTED, JobStatus.FAILED},
}
# Deletes run to their end once requested: the template is locked until its delete operation ends.
UNCANCELLABLE = frozenset({JobAction.DELETE_TEMPLATE, JobAction.DELETE_VM, JobAction.DELETE})
LOG_LIMIT = 256 * 1024  # keep the tail of very long logs


class HostJob(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="jobs")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    kind = models.CharField(max_length=16, choices=JobKind.choices)
    action = models.CharField(max_length=32, choices=JobAction.choices)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.PENDING)
    progress = models.PositiveSmallIntegerField(default=0)
    # What the job works on, as "<kind>:<id>" (e.g. "template:7", "volume:<uuid>"): hostjobs does not
    # import the apps that own those rows, and the reference outlives a rolled-back template.
    target = models.CharField(max_length=128, blank=True, default="")
    description = models.CharField(max_length=255, blank=True, default="")
    # Which step of its parent started it (e.g. the flow phase), so a resumed parent finds its jobs again.
    step = models.CharField(max_length=32, blank=True, default="")
    deadline = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    log_offset = models.BigIntegerField(default=0, help_text="bytes of the host-side log already copied")
    last_seen = models.DateTimeField(null=True, blank=True, help_text="when the host last reported on this job")
    host_cleared = models.BooleanField(default=False, help_text="the host pushed the whole log and removed the job")
    log = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")
    error_code = models.CharField(max_length=64, blank=True, default="")
    created = models.DateTimeField(default=timezone.now, db_index=True)
    started = models.DateTimeField(null=True, blank=True)
    completed = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        indexes = [models.Index(fields=["status"])]

    def __str__(self):
        return f"{self.action} {self.target} [{self.status}]"

    @classmethod
    def create(cls, host, action, *, parent=None, target="", description="", step="", deadline=None):
        return cls.objects.create(
            host=host, action=action, kind=ACTION_KIND[action], parent=parent, target=target,
            description=description, step=step, deadline=deadline,
        )

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    # -- guarded transitions -------------------------------------------------------------------
    def _transition(self, new: str, **fields) -> None:
        """Move to ``new`` if the stored status allows it. The conditional UPDATE makes the check and
        the write one step, so two workers cannot both move the same job."""
        old = self.status
        if new not in TRANSITIONS.get(old, ()):
            raise InvalidTransition(f"job {self.pk}: {old} -> {new} is not allowed")
        updated = HostJob.objects.filter(pk=self.pk, status=old).update(status=new, **fields)
        if not updated:
            self.refresh_from_db(fields=["status"])
            raise InvalidTransition(f"job {self.pk}: status changed to {self.status} meanwhile")
        self.status = new
        for k, v in fields.items():
            setattr(self, k, v)

    def start(self) -> None:
        self._transition(JobStatus.RUNNING, started=timezone.now())

    def end(self, status: str, error: str = "", code: str = "") -> bool:
        """Move the job to done, failed or aborted (netbox's ``terminate()``): the status, ``error``,
        ``code`` and the completion time in one conditional UPDATE on the status this copy holds.
        The first end wins: False, and nothing written, when the job has ended already (a push, a poll
        or another worker ended it; the copy is read again). A job that moved meanwhile to another
        live status (running -> aborting: a cancel came in) raises InvalidTransition, as does a move
        the transitions table forbids (pending -> done); the caller decides again on the new status."""
        if status not in TERMINAL:
            raise ValueError(f"{status} is not an end")
        fields = {"error": error[:4000], "error_code": code, "completed": timezone.now()}
        if status == JobStatus.DONE:
            fields["progress"] = 100
        if not self.is_terminal:
            try:
                self._transition(status, **fields)
                return True
            except InvalidTransition:
                self.refresh_from_db(fields=["status"])  # refused: unless it has ended, the refusal stands
                if not self.is_terminal:
                    raise
        self.refresh_from_db(fields=["status", "progress", "error", "error_code", "result", "completed"])
        return False

    def cancel(self, reason: str = "cancelled on request") -> None:
        """Ask the job to stop (vdsm's ``Job.abort()``), by its status: pending -> aborted at once (it
        never reached its host); running -> aborting, then whoever runs it (the flow's worker for an
        operation, ``runner.wait`` for a host job) stops the host work, rolls back and ends it aborted.
        ``reason`` becomes the job's error in the same conditional UPDATE, so a job that ended
        meanwhile keeps its own. A job that has ended or is aborting already: InvalidTransition; a
        delete: NotCancellable (it ends by itself; stopped half way it would leave a template with
        some of its volumes gone). A job that moved meanwhile is decided again on its new status."""
        while True:
            if self.is_terminal or self.status == JobStatus.ABORTING:
                raise InvalidTransition(f"job {self.pk} is {self.status}: it cannot be cancelled")
            if self.action in UNCANCELLABLE:
                raise NotCancellable(f"job {self.pk} ({self.get_action_display().lower()}) cannot be cancelled: a "
                                     "delete runs to its end (stopped half way it would leave some volumes deleted "
                                     "and others not); it ends by itself")
            seen = self.status
            try:
                if seen == JobStatus.PENDING:
                    self._transition(JobStatus.ABORTED, error=reason[:4000], error_code="aborted",
                                     completed=timezone.now())
                else:
                    self._transition(JobStatus.ABORTING, error=reason[:4000])
                return
            except InvalidTransition:
                if self.status == seen:  # refused from this status, not moved meanwhile
                    raise

    def abort_requested(self) -> bool:
        """Whether a cancel has reached the job (aborting or aborted), read from its row, with the
        cancel's reason (``error``)."""
        self.refresh_from_db(fields=["status", "error"])
        return self.status in (JobStatus.ABORTING, JobStatus.ABORTED)

    def set_progress(self, progress: int, log: str | None = None) -> None:
        fields = {"progress": max(0, min(100, int(progress)))}
        if log is not None:
            fields["log"] = log[-LOG_LIMIT:]
        HostJob.objects.filter(pk=self.pk).update(**fields)
        for k, v in fields.items():
            setattr(self, k, v)

    def append_log(self, text: str) -> None:
        self.log = (self.log + text)[-LOG_LIMIT:]
        HostJob.objects.filter(pk=self.pk).update(log=self.log)

    def delete(self, *args, **kwargs):
        if not self.is_terminal:
            raise InvalidTransition(f"job {self.pk} is {self.status}: only terminal jobs can be deleted")
        return super().delete(*args, **kwargs)


class CallbackNonce(models.Model):
    """Nonces of accepted host notifications, so a replayed one is refused."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE)
    nonce = models.CharField(max_length=64)
    received = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["host", "nonce"], name="uniq_callback_nonce")]

    def __str__(self):
        return f"{self.host_id}:{self.nonce}"
