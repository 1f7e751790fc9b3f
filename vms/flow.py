"""The VM flow: a VM from a template, on the template's host, run by the flow engine (``sealing.engine``):

    CREATE_VM -> CREATE_DISKS -> IDENTITY -> DEFINE [-> START] -> DONE

CREATE_VM     re-check in the worker: the template is ok, has its hardware, its volumes LEGAL + SHARED;
              no domain of the VM's name on the host; record the VM's disks (one per template disk)
CREATE_DISKS  a storage host job per disk, into the host's VM pool: thin, a qcow2 overlay whose backing
              file is the template's volume (``create-volume --parent``, -F always given; the host checks
              the parent is SHARED + LEGAL and never writes it); full, an independent copy of it
IDENTITY      the VM's NoCloud seed (``vms.seed.build_seed``: instance-id = its UUID, hostname, keys, the
              root password hash) written on the host (``write-seed``, 0600). No appliance when the
              template was sealed by vmseal (its first-boot agent applies the seed) or the guest has
              cloud-init; otherwise one virt-customize over the VM's own disks (a virt host job: hostname,
              machine-id emptied, keys, the hash through a commands file, never argv). The op's log says
              which. The root password hash is cleared from the row with the move that ends the step.
DEFINE        the domain built from the template's hardware (``templates.hardware.build``: new name, UUID, MACs,
              its own disks, the seed as a CD-ROM, its serial console logged to
              /var/lib/vmseal/console/<uuid>.log), defined on the host
START         only when asked

On any failure or cancel the engine rolls back (``remove``): the domain undefined if it is this VM's
(same UUID), its volumes and seed deleted through the host, then the row removed; what could not be
removed leaves the VM failed in CLEANUP_FAILED, and the sweeper retries. The template's files are only
ever read.

Delete (an operation of its own, ``DELETE_VM``): a running VM is refused unless its delete was forced
(then it is powered off first); the domain undefined, the volumes and seed deleted, never the template's.
"""

from __future__ import annotations

import logging

from django.conf import settings

from hostjobs import hostops, port, runner
from hostjobs.errors import DomainNotFound, HostError
from hostjobs.models import HostJob, JobAction, JobStatus
from sealing import engine, sysprep
from sealing.engine import FlowFailed
from sealing.lease import Lease
from templates import hardware
from templates.models import Template
from vms import states
from vms.models import Clone, Vm, VmDisk
from vms.states import VmPhase
from volumes.models import Legality, Volume
from webhooks import events as webhooks

log = logging.getLogger("vmseal.flow")

PROGRESS = {VmPhase.CREATE_VM: 0, VmPhase.CREATE_DISKS: 5, VmPhase.IDENTITY: 50, VmPhase.DEFINE: 80,
            VmPhase.START: 90, VmPhase.DONE: 100}
COMMANDS_FILE = "identity.cmds"  # virt-customize's commands, from the job's spec (they carry the hash)


def template_problem(t: Template, host=None) -> str:
    """Why a VM cannot be made from ``t`` (on ``host``), or "" (the API's check and CREATE_VM's)."""
    if host is not None and host.pk != t.host_id:
        return f"template {t.name!r} has no copy on host {host.name} (it is on {t.host.name})"
    if t.status != "ok":
        return f"template {t.name!r} is {t.status}: only an ok template can be used"
    if not t.hardware:
        return (f"template {t.name!r} was made before vmseal recorded its VM's hardware: it cannot make VMs "
                "(make the template again)")
    disks = list(t.disks.select_related("volume"))
    if not disks:
        return f"template {t.name!r} has no disks"
    try:
        targets = hardware.disk_targets(t.hardware)
    except ValueError as e:
        return f"template {t.name!r}: its recorded hardware cannot make a VM: {e}"
    if sorted(targets) != sorted(d.target for d in disks):
        return (f"template {t.name!r}: its hardware has disks {', '.join(targets) or 'none'} but its volumes are for "
                f"{', '.join(d.target for d in disks)} (a read-only disk of the source VM is not copied): it cannot "
                "make VMs")
    for d in disks:
        v = d.volume
        if v is None or (v.legality, v.type) != (Legality.LEGAL, "SHARED"):
            what = "no volume" if v is None else f"volume {v.id} is {v.type}/{v.legality}"
            return f"template {t.name!r}: disk {d.target} has {what}: only LEGAL, SHARED volumes can be used"
    return ""


def guest_has_cloud_init(t: Template) -> bool:
    """Whether the template's guest reported cloud-init (recorded by the seal, when it did)."""
    return any(i.get("item") == "cloud-init" and i.get("ok") for i in (t.audit or {}).get("items", []))


def needs_appliance(t: Template) -> bool:
    """Only an unsealed template without cloud-init needs its VM's identity written into its disks."""
    return not t.sealed and not guest_has_cloud_init(t)


# -- steps -------------------------------------------------------------------------------------------------
def create_vm(ctx: engine.Context) -> None:
    vm = ctx.obj
    t = Template.objects.select_related("host").get(pk=vm.template_id)
    problem = template_problem(t, vm.host)
    if problem:
        raise FlowFailed(problem)
    try:
        info = ctx.host_call(ctx.host.domain_info, vm.name)
    except DomainNotFound:
        info = None
    if info is not None:
        raise FlowFailed(f"host {vm.host.name} has a VM named {vm.name!r} already")
    if not vm.disks.exists():
        VmDisk.objects.bulk_create(
            VmDisk(vm=vm, index=d.index, target=d.target, template_volume=d.volume)
            for d in t.disks.select_related("volume"))


def create_disks(ctx: engine.Context) -> None:
    """Every disk's clone is started on the host first (they run there at once), then each is waited for."""
    vm = ctx.obj
    host = vm.host
    todo = []
    for disk in vm.disks.select_related("volume", "template_volume"):
        vol, parent = disk.volume, disk.template_volume
        if vol is not None and vol.legality == Legality.LEGAL:
            continue  # made before a restart
        if parent is None:
            raise FlowFailed(f"disk {disk.target}: its template volume is gone")
        thin = vm.clone == Clone.THIN
        if vol is None:
            vol = Volume(host=host, parent=parent if thin else None)
            vol.path = f"{host.vm_pool_path}/{vol.id}.qcow2"
            vol.save()
            disk.volume = vol
            disk.save(update_fields=["volume"])
        if thin:
            args = hostops.create_thin_volume(host.vm_pool_path, vol.id, parent_pool=host.pool_path, parent=parent.id)
            what, timeout = f"thin {disk.target} on template volume {parent.id}", settings.VMSEAL_STORAGE_TIMEOUT
        else:
            args = hostops.create_volume(host.vm_pool_path, vol.id, source=parent.path, source_format=parent.format,
                                         rate_limit=host.copy_rate_limit or 0)
            what, timeout = f"full copy of {disk.target} (template volume {parent.id})", settings.VMSEAL_COPY_TIMEOUT
        todo.append((vol, (JobAction.CLONE, VmPhase.CREATE_DISKS, f"volume:{vol.id}", what, args), timeout))
    if len(todo) > 1:
        for _vol, job_args, timeout in todo:
            ctx.start_host_job(*job_args, timeout=timeout)
    for vol, job_args, timeout in todo:
        job = ctx.host_job(*job_args, timeout=timeout)
        vol.mirror(job.result)


def identity(ctx: engine.Context) -> dict:
    from vms import seed

    vm = ctx.obj
    t = Template.objects.get(pk=vm.template_id)
    iso = seed.build_seed(instance_id=str(vm.uuid), hostname=vm.hostname, ssh_authorized_keys=vm.ssh_authorized_keys,
                          root_password_hash=vm.root_password_hash)
    ctx.check_abort()
    ctx.host_call(ctx.host.helper, hostops.write_seed(vm.host.vm_pool_path, vm.uuid), input=iso, timeout=60)
    appliance = needs_appliance(t)
    if appliance:
        vols = [d.volume for d in vm.disks.select_related("volume")]
        argv = ["virt-customize", "--no-network"]
        for v in vols:
            argv += ["--format", "qcow2", "-a", v.path]
        argv += ["--commands-from-file", COMMANDS_FILE]
        ctx.host_job(JobAction.CUSTOMIZE, VmPhase.IDENTITY, f"vm:{vm.pk}", f"virt-customize over {len(vols)} disk(s)",
                     hostops.run(argv, pool=vm.host.vm_pool_path, writable=[v.id for v in vols],
                                 env=sysprep.environment(vm.host.guestfs_backend_settings)),
                     timeout=vm.host.seal_timeout or settings.VMSEAL_SEAL_TIMEOUT,
                     files={COMMANDS_FILE: customize_commands(vm)})
        ctx.op.append_log("identity: seed written; the template is not sealed by vmseal and its guest has no "
                          "cloud-init: virt-customize ran over the VM's disks (one appliance)\n")
    else:
        why = "sealed by vmseal (its first-boot agent applies the seed)" if t.sealed else "its guest has cloud-init"
        ctx.op.append_log(f"identity: seed written; no appliance: the template is {why}\n")
    return {"identity_appliance": appliance, "root_password_hash": ""}


def customize_commands(vm: Vm) -> str:
    """virt-customize's commands for the VM's identity (a commands file: the hash is never in an argv).
    The values were validated by the model (one line, no shell or sed metacharacters in hostname and keys)."""
    lines = [f"hostname {vm.hostname}", "write /etc/machine-id:", "delete /var/lib/dbus/machine-id",
             "delete /etc/ssh/ssh_host_*",
             "firstboot-command ssh-keygen -A && (systemctl try-restart ssh.service sshd.service || true)"]
    lines += [f"ssh-inject root:string:{k}" for k in vm.ssh_authorized_keys]
    if vm.root_password_hash:
        h = vm.root_password_hash.replace("\\", "").replace("$", "\\$")
        lines.append("edit /etc/shadow:s{^root:[^:]*:}{root:" + h + ":}")
    return "\n".join(lines) + "\n"


def define(ctx: engine.Context) -> None:
    vm = ctx.obj
    try:
        info = ctx.host_call(ctx.host.domain_info, vm.name)
    except DomainNotFound:
        info = None
    if info is not None:
        if info.uuid == str(vm.uuid):
            return  # defined before a restart
        raise FlowFailed(f"host {vm.host.name} has a VM named {vm.name!r} already")
    t = Template.objects.get(pk=vm.template_id)
    disks = [(d.target, d.volume.path, "qcow2") for d in vm.disks.select_related("volume")]
    xml = hardware.build(t.hardware, name=vm.name, uuid=str(vm.uuid), disks=disks, seed=vm.seed_path,
                       console_log=hostops.console_log(vm.uuid))
    ctx.host_call(ctx.host.define_domain, xml)
    ctx.op.append_log(f"domain {vm.name} defined ({vm.uuid})\n")


def start(ctx: engine.Context) -> None:
    vm = ctx.obj
    if ctx.host_call(ctx.host.domain_state, vm.name) != "running":
        ctx.host_call(ctx.host.start_domain, vm.name)


STEPS = {VmPhase.CREATE_VM: create_vm, VmPhase.CREATE_DISKS: create_disks, VmPhase.IDENTITY: identity,
         VmPhase.DEFINE: define, VmPhase.START: start}


# -- removal ----------------------------------------------------------------------------------------------
def remove_domain(vm: Vm, *, force: bool) -> str:
    """Undefine the VM's domain (only if it is this VM's: same UUID), powering it off first when
    ``force``. Returns "" or why not (a running VM without force: "running")."""
    host = port.for_host(vm.host)
    try:
        info = host.domain_info(vm.name)
    except DomainNotFound:
        return ""
    if info.uuid != str(vm.uuid):
        return ""  # not ours (a name taken meanwhile): never touched
    if not info.stopped:
        if not force:
            return "running"
        host.destroy_domain(vm.name)
    host.undefine_domain(vm.name)
    return ""


def remove_volumes(vm: Vm, op: HostJob, step: str, label: str, lease: Lease) -> list[str]:
    """Delete the VM's volumes (a storage job each) and its seed; returns what could not be deleted."""
    leftovers = []
    pool = vm.host.vm_pool_path
    for disk in vm.disks.select_related("volume"):
        vol = disk.volume
        if vol is None:
            continue
        try:
            runner.run(vm.host, JobAction.DELETE, hostops.delete_volume(pool, vol.id), parent=op, step=step,
                       target=f"volume:{vol.id}", description=f"{label} {disk.target}",
                       timeout=settings.VMSEAL_STORAGE_TIMEOUT, heartbeat=lease.heartbeat)
        except HostError as e:
            Volume.objects.filter(pk=vol.pk).update(legality=Legality.ILLEGAL)
            leftovers.append(f"{vol.id}: {e}")
            continue
        disk.volume = None
        disk.save(update_fields=["volume"])
        vol.delete()
    try:
        port.for_host(vm.host).helper(hostops.delete_seed(pool, vm.uuid), timeout=60)
    except HostError as e:
        leftovers.append(f"seed {vm.seed_path}: {e}")
    return leftovers


class VmFlow(engine.Flow):
    model = Vm
    kind = "VM"
    audit_kind = "vm"
    task = "vms.tasks.run_vm_flow"
    ok_event, failed_event = "vm.created", "vm.failed"  # sent by the engine (webhooks.events)

    def event_data(self, vm):
        return vm_data(vm)
    delete_action = JobAction.DELETE_VM
    steps = STEPS
    progress = PROGRESS

    def next_phase(self, vm, phase):
        return states.next_phase(phase, vm.start)

    def remove(self, vm, op, lease):
        try:
            remove_domain(vm, force=True)
        except HostError as e:
            return [f"domain {vm.name}: {e}"]  # volumes stay while a domain may use them
        return remove_volumes(vm, op, VmPhase.ROLLBACK, "rollback: delete", lease)

    def removed_line(self, vm):
        return "rollback done: VM, its domain, volumes and seed removed\n"

    def delete(self, vm, op, lease):
        delete(vm, op, lease)


FLOW = VmFlow()


def run(vm_id: int) -> None:
    engine.run(FLOW, vm_id)


def delete(vm: Vm, op: HostJob, lease: Lease) -> None:
    """Delete a VM: its domain (a running one only when forced: powered off first), its volumes and seed
    through the host, then the row. What cannot be removed keeps the VM, failed; deleting again retries."""
    if op.is_terminal:
        return
    if op.status == JobStatus.PENDING:
        op.start()
    lease.heartbeat()
    try:
        why = remove_domain(vm, force=vm.force_delete)
    except HostError as e:
        why = f"its domain could not be removed: {e}"
    if why == "running" and vm.allows("delete_refused"):
        message = f"VM {vm.name!r} is running: delete it with force to power it off first"
        vm.delete_refused(message)
        if op.end(JobStatus.FAILED, message, "vm_running"):
            webhooks.emit("job.failed", op, **engine.job_data(op))  # the VM is as it was: no vm.failed
        return
    leftovers = [why] if why else remove_volumes(vm, op, "DELETE", "delete", lease)  # volumes stay with a domain
    if leftovers:
        vm.delete_incomplete(f"delete incomplete: {'; '.join(leftovers)}")
        webhooks.emit("vm.failed", vm, **vm_data(vm))
        if op.end(JobStatus.FAILED, vm.error, "delete_incomplete"):
            webhooks.emit("job.failed", op, **engine.job_data(op))
    else:
        gone = {"type": "vm", "id": vm.pk, "repr": str(vm)}
        data = vm_data(vm)
        vm.delete()
        op.append_log("VM, its domain, volumes and seed removed\n")
        op.end(JobStatus.DONE)
        webhooks.emit("vm.deleted", gone, **data)


def vm_data(vm: Vm) -> dict:
    """What a VM's webhook events carry besides its type, id and name (never its identity's secrets)."""
    return {"name": vm.name, "host": vm.host_id, "template": vm.template_id, "clone": vm.clone, "uuid": str(vm.uuid),
            "status": vm.status, "error": vm.error, "job": str(vm.job_id) if vm.job_id else None}
