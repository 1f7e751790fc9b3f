"""Starting a template operation: the one path shared by the REST API, the admin form and the
command line. It validates fast (one libvirt lookup over the host's pinned SSH connection), creates
the Template row and its operation job in one transaction, and enqueues the flow on commit.
A refusal changes nothing."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django_q.tasks import async_task
from rest_framework import serializers

from hostjobs import hostops, port, virt
from hostjobs.errors import DomainNotFound, HostError, InvalidTransition
from hostjobs.models import HostJob, JobAction
from templates.models import Template


class Refused(Exception):
    """A request that must not start. ``field`` names the input at fault; ``status`` the HTTP status."""

    def __init__(self, field: str, message: str, code: str, status: int = 400):
        super().__init__(message)
        self.field, self.message, self.code, self.status = field, message, code, status


def validate_source(host, vm_name: str) -> virt.DomainInfo:
    try:
        info = port.for_host(host).domain_info(vm_name)
    except DomainNotFound:
        raise Refused("vm", f"no VM named {vm_name!r} on host {host.name}", "vm_not_found") from None
    except HostError as e:
        raise Refused("host", f"host {host.name} cannot be used: {e}", e.code, status=400) from None
    if not info.stopped:
        raise Refused("vm", f"VM {vm_name!r} is {info.state}: only a shut-off VM can become a template",
                      "vm_not_stopped", status=409)
    if not [d for d in info.disks if not d.readonly]:
        raise Refused("vm", f"VM {vm_name!r} has no disks", "vm_without_disks")
    try:
        port.for_host(host).check_sources([info])
    except HostError as e:
        raise Refused("host", f"host {host.name} cannot be used: {e}", e.code, status=400) from None
    if info.problems:
        raise Refused("vm", f"VM {vm_name!r} cannot become a template: {'; '.join(info.problems)}",
                      "vm_disk_not_copyable")
    return info


def check_seal_options(host, opts: dict) -> None:
    """Operation names must be known to the host's own virt-sysprep (read once, kept on the Host)."""
    if not (opts.get("operations_add") or opts.get("operations_remove")):
        return
    if not host.sysprep_operations:
        try:
            host.sysprep_operations = port.for_host(host).helper(hostops.sysprep_operations(), timeout=60)["operations"]
        except HostError as e:
            raise Refused("host", f"host {host.name} cannot be used: {e}", e.code) from None
        host.save(update_fields=["sysprep_operations"])
    from sealing.options import check_operations

    try:
        check_operations(opts, host.sysprep_operations)
    except serializers.ValidationError as e:
        raise Refused("seal_options", e.detail, "invalid") from None


def start(template: Template) -> HostJob:
    """Validate, create the Template row (locked, phase CREATE_TEMPLATE) and its operation job, enqueue."""
    template.check_new()
    if Template.objects.filter(name=template.name).exists():
        raise Refused("name", f"a template named {template.name!r} already exists", "unique")
    validate_source(template.host, template.vm_name)
    check_seal_options(template.host, template.seal_options or {})
    try:
        with transaction.atomic():
            template.save()
            op = HostJob.create(
                template.host, JobAction.CREATE_TEMPLATE, target=f"template:{template.pk}",
                description=f"create template {template.name!r} from VM {template.vm_name!r}"
                + (" and seal it" if template.seal else ""),
            )
            template.job = op
            template.save(update_fields=["job"])
            pk = template.pk
            transaction.on_commit(
                lambda: async_task("sealing.tasks.run_template_flow", pk, task_name=f"template-{pk}-{op.pk}")
            )
    except IntegrityError:
        raise Refused("name", f"a template named {template.name!r} already exists", "unique") from None
    return op


def check_no_vms(t: Template) -> None:
    """A template whose volumes back thin VMs (or VMs still being made from it) cannot be deleted
    (``sealing.flow.holders``: through the volumes' parents and reverse relations, no import of vms)."""
    from sealing.flow import holders

    held = holders(t)
    if held:
        names = ", ".join(held)
        raise Refused("template", f"template {t.name!r} backs VMs: {names}: delete them first (a thin VM's disks are "
                                  "overlays on the template's volumes)", "template_in_use", 409)


def request_delete(template: Template) -> HostJob:
    """Delete a template and its volumes on the host, as an operation job. Refused while a job runs
    (an operation, or the rollback of a failed one, which removes the template itself)."""
    busy = Refused("template", f"template {template.name!r} has a job running: cancel it or wait", "locked", 409)
    with transaction.atomic():
        t = Template.objects.select_for_update().get(pk=template.pk)
        if not t.allows("lock_for_delete"):
            raise busy
        check_no_vms(t)
        op = HostJob.create(t.host, JobAction.DELETE_TEMPLATE, target=f"template:{t.pk}",
                            description=f"delete template {t.name!r} and its volumes")
        try:
            t.lock_for_delete(op)  # refused if a worker moved it since the read (no row lock on SQLite)
        except InvalidTransition:
            raise busy from None
        pk = t.pk
        transaction.on_commit(
            lambda: async_task("sealing.tasks.run_template_flow", pk, task_name=f"template-{pk}-delete-{op.pk}"))
    return op
