"""VMs made from templates. A Vm is made on its template's host; each of its disks (VmDisk) is a Volume
in the host's VM pool: thin (a qcow2 overlay backed by the template's SHARED volume, its ``parent``)
or full (an independent copy).

Its ``status`` and ``phase`` move only through the methods below (``vms.states`` has the tables),
each one conditional UPDATE; assigning either attribute raises. The root password hash is a secret:
it is kept only until the VM's seed (and, where needed, its disks) carry it, then cleared
(``root_password_set`` remembers that one was given); it never appears in API answers or logs."""

import uuid

from django.core.exceptions import ValidationError
from django.db import models

from hostjobs.errors import InvalidTransition
from hostjobs.models import Host, HostJob
from templates import states as template_states
from templates.models import Template
from vms import states, validators
from vms.states import VmPhase, VmStatus
from volumes.models import Volume


class Clone(models.TextChoices):
    THIN = "thin", "Thin (backed by the template's volumes)"
    FULL = "full", "Full (an independent copy)"


class Vm(template_states.GuardedState, models.Model):
    state_label, state_moves = "VM", states.MOVES
    state_tables = (states.STATUS_TRANSITIONS, states.PHASE_TRANSITIONS)
    name = models.CharField(max_length=63, validators=[validators.validate_vm_name],
                            help_text="the libvirt domain's name on the host")
    # SET_NULL: a template is deleted only when no VM's volume has one of its volumes as parent (thin VMs
    # keep it; Volume.parent PROTECT refuses it at the database too): a full clone just forgets it.
    template = models.ForeignKey(Template, null=True, on_delete=models.SET_NULL, related_name="vms",
                                 help_text="what it was made from (kept by thin VMs: their disks are backed by it)")
    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="vms")
    clone = models.CharField(max_length=8, choices=Clone.choices, default=Clone.THIN)
    hostname = models.CharField(max_length=253, blank=True, validators=[validators.validate_hostname],
                                help_text="the guest's host name (RFC 1123); blank: the VM's name")
    ssh_authorized_keys = models.JSONField(default=list, blank=True, validators=[validators.validate_ssh_keys],
                                           help_text="public key lines for root")
    root_password_hash = models.CharField(max_length=255, blank=True, default="", editable=False,
                                          validators=[validators.validate_password_hash])
    root_password_set = models.BooleanField(default=False, editable=False,
                                            help_text="a root password hash was given (it is not kept)")
    start = models.BooleanField(default=False, help_text="start the VM once it is defined")
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    status = template_states.StateField(max_length=16, choices=VmStatus.choices, default=VmStatus.LOCKED)
    phase = template_states.StateField(max_length=32, choices=VmPhase.choices, default=VmPhase.CREATE_VM)
    identity_appliance = models.BooleanField(null=True, editable=False,
                                             help_text="whether the identity step ran a libguestfs appliance")
    force_delete = models.BooleanField(default=False, editable=False,
                                       help_text="its delete was asked with force: power it off if it runs")
    error = models.TextField(blank=True, default="")
    job = models.OneToOneField(HostJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="vm")
    lease_expires = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=32, blank=True, default="", editable=False)
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created"]
        verbose_name = "VM"
        constraints = [models.UniqueConstraint(fields=["host", "name"], name="uniq_vm_name_per_host")]

    def __str__(self):
        return self.name

    def clean(self):
        if not self.hostname and self.name:
            try:
                validators.validate_hostname(self.name)
            except ValidationError:
                raise ValidationError({"hostname": ValidationError(
                    f"the VM name {self.name!r} is not a valid host name: give a hostname", code="required")}) from None
            self.hostname = self.name
        if isinstance(self.ssh_authorized_keys, list):
            try:
                self.ssh_authorized_keys = [validators.normalize_key(k) for k in self.ssh_authorized_keys]
            except ValidationError:
                pass  # the field's validator says why
        if self.root_password_hash:
            self.root_password_set = True

    @property
    def seed_path(self) -> str:
        return f"{self.host.vm_pool_path}/{self.uuid}.seed.iso"

    # -- guarded transitions (templates.states.GuardedState, vms.states' tables) ------------------------

    @staticmethod
    def _findings(found: dict) -> dict:
        unknown = set(found) - states.FINDINGS
        if unknown:
            raise ValueError(f"not something a step records: {sorted(unknown)}")
        return found

    def check_new(self) -> None:
        if self.pk is not None or (self.status, self.phase) != (VmStatus.LOCKED, VmPhase.CREATE_VM):
            raise InvalidTransition(f"VM {self.name!r} cannot start: a new VM starts "
                                    f"{VmStatus.LOCKED}/{VmPhase.CREATE_VM}")

    def advance(self, to: str, **found) -> None:
        if self.allows("advance") and to != states.next_phase(self.phase, self.start):
            raise InvalidTransition(f"VM {self.pk} ({self.name}): advance {self.phase} -> {to} is not the next step")
        self._move("advance", phase=to, **self._findings(found))

    def finish(self, **found) -> None:
        self._move("finish", status=VmStatus.OK, phase=VmPhase.DONE, **self._findings(found))

    def start_rollback(self, error: str, **found) -> None:
        self._move("start_rollback", status=VmStatus.FAILED, phase=VmPhase.ROLLBACK, error=error,
                   **self._findings(found))

    def rollback_incomplete(self, error: str) -> None:
        self._move("rollback_incomplete", phase=VmPhase.CLEANUP_FAILED, error=error)

    def lock_for_delete(self, job: HostJob, *, force: bool = False) -> None:
        """A delete was requested: the VM is locked by its delete operation ``job`` (``force``: a running
        VM is powered off first; without it the worker refuses to delete a running VM)."""
        self._move("lock_for_delete", status=VmStatus.LOCKED, job=job, force_delete=force)

    def delete_refused(self, error: str) -> None:
        self._move("delete_refused", status=VmStatus.OK, error=error)

    def delete_incomplete(self, error: str) -> None:
        self._move("delete_incomplete", status=VmStatus.FAILED, error=error)


class VmDisk(models.Model):
    """One disk of a VM: the template disk it was made from and its own volume in the host's VM pool."""

    vm = models.ForeignKey(Vm, on_delete=models.CASCADE, related_name="disks")
    index = models.PositiveSmallIntegerField()
    target = models.CharField(max_length=32)
    template_volume = models.ForeignKey(Volume, null=True, on_delete=models.SET_NULL, related_name="+",
                                        help_text="the template volume it was made from")
    volume = models.OneToOneField(Volume, null=True, blank=True, on_delete=models.SET_NULL, related_name="vm_disk")

    class Meta:
        ordering = ["index"]
        constraints = [models.UniqueConstraint(fields=["vm", "index"], name="uniq_vm_disk_index")]

    def __str__(self):
        return f"{self.vm} disk {self.index} ({self.target})"
