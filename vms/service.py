"""Starting a VM operation: the one path shared by the REST API, the admin and the command line. A
request is checked against the database only (no libvirt call in a request, except ``state``'s
read-only look for a delete): the template must be ok, with its hardware and LEGAL + SHARED volumes,
on the VM's host; the name free there. The Vm row and its operation job are made in one transaction
and the flow enqueued on commit. A refusal changes nothing."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django_q.tasks import async_task

from hostjobs import port
from hostjobs.errors import DomainNotFound, HostError, InvalidTransition
from hostjobs.models import HostJob, JobAction
from sealing.service import Refused
from templates.models import Template
from vms.flow import template_problem
from vms.models import Vm


def start(vm: Vm) -> HostJob:
    """Validate, create the Vm row (locked, CREATE_VM) and its operation job, enqueue the flow."""
    vm.check_new()
    t = Template.objects.select_related("host").get(pk=vm.template_id)
    if vm.host_id != t.host_id:
        raise Refused("host", f"template {t.name!r} has no copy on host {vm.host.name} (copies between hosts are "
                              "not supported yet)", "no_template_copy", 409)
    problem = template_problem(t)
    if problem:
        raise Refused("template", problem, "template_unusable", 409)
    duplicate = Refused("name", f"host {vm.host.name} has a VM named {vm.name!r} already", "unique")
    if Vm.objects.filter(host=vm.host, name=vm.name).exists():
        raise duplicate
    try:
        with transaction.atomic():
            # the template row locked: a delete requested meanwhile either came first (refused here) or
            # sees this VM (and is refused)
            t = Template.objects.select_for_update().get(pk=t.pk)
            if t.status != "ok":
                raise Refused("template", f"template {t.name!r} is {t.status}: only an ok template can be used",
                              "template_unusable", 409)
            vm.save()
            op = HostJob.create(vm.host, JobAction.CREATE_VM, target=f"vm:{vm.pk}",
                                description=f"create VM {vm.name!r} ({vm.clone}) from template {t.name!r}"
                                + (" and start it" if vm.start else ""))
            vm.job = op
            vm.save(update_fields=["job"])
            pk = vm.pk
            transaction.on_commit(lambda: async_task("vms.tasks.run_vm_flow", pk, task_name=f"vm-{pk}-{op.pk}"))
    except IntegrityError:
        raise duplicate from None
    return op


def domain_state(vm: Vm) -> str:
    """libvirt's state of the VM's domain ("running", "shut off", ...; "" if it has none), a read-only
    look over the host's pinned connection. Raises Refused when the host cannot be asked."""
    try:
        info = port.for_host(vm.host).domain_info(vm.name)
    except DomainNotFound:
        return ""
    except HostError as e:
        raise Refused("host", f"host {vm.host.name} cannot be asked: {e}", e.code, 503) from None
    return info.state if info.uuid == str(vm.uuid) else ""


def request_delete(vm: Vm, *, force: bool = False) -> HostJob:
    """Delete a VM (domain, volumes, seed) as an operation job. A running VM is a 409 unless ``force``
    (then the worker powers it off first; it checks again, as the VM may start meanwhile)."""
    busy = Refused("vm", f"VM {vm.name!r} has a job running: wait for it", "locked", 409)
    if not vm.allows("lock_for_delete"):
        raise busy
    if not force and vm.phase == "DONE":
        state = domain_state(vm)
        if state and state != "shut off":
            raise Refused("vm", f"VM {vm.name!r} is {state}: stop it, or delete it with force=true to power it off",
                          "vm_running", 409)
    with transaction.atomic():
        v = Vm.objects.select_for_update().get(pk=vm.pk)
        op = HostJob.create(v.host, JobAction.DELETE_VM, target=f"vm:{v.pk}",
                            description=f"delete VM {v.name!r}, its domain, volumes and seed"
                            + (" (forced: powered off first)" if force else ""))
        try:
            v.lock_for_delete(op, force=force)
        except InvalidTransition:
            raise busy from None
        pk = v.pk
        transaction.on_commit(lambda: async_task("vms.tasks.run_vm_flow", pk, task_name=f"vm-{pk}-delete-{op.pk}"))
    return op
