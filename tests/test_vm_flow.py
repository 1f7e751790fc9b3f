"""The VM flow's decisions, run for real (``vms.flow.run`` on a Vm row, in this process, no qcluster)
against the in-process fake of a host's protocol (tests/utils/fakehost.py) behind the host port: thin
and full disks, the identity step with and without an appliance, a failure in each step leaving nothing
behind, a resume after a worker died mid-flow, a cancel, delete (running: refused unless forced) and the
sweeper. Real hosts: tests/test_e2e_vms.py."""

from __future__ import annotations

import pytest

from hostjobs import port, runner
from hostjobs.errors import HostCommandFailed
from hostjobs.models import Host, HostJob, JobAction, JobStatus
from tests.fixtures.templates import create_template
from tests.utils.fakehost import ALL, FakeHost
from volumes.models import Volume

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK"
USER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK ops@example"
HASH = "$6$saltsalt$" + "h" * 86


@pytest.fixture
def fake(db, monkeypatch):
    monkeypatch.setattr(runner, "POLL_MIN", 0.0)
    monkeypatch.setattr(runner, "WATCH", 0.0)
    monkeypatch.setattr("django.conf.settings.VMSEAL_HOST_RETRY", 0)
    host = FakeHost()
    with port.use(lambda h: host):
        yield host


@pytest.fixture
def host(db):
    return Host.objects.create(name="h", address="10.211.0.251", host_key=KEY)


@pytest.fixture
def template(host, fake):
    """A sealed, ok template with two SHARED, LEGAL volumes (on the fake host too) and its hardware."""
    from templates import hardware as domain

    t = create_template(host, "tpl", disks=2, sealed=True, seal=True, hardware=domain.scrub(fake.domain_xml("vm")))
    for d in t.disks.select_related("volume"):
        v = d.volume
        fake.volumes[str(v.id)] = {"id": str(v.id), "type": "SHARED", "legality": "LEGAL",
                                   "generation": v.generation, "parent": None, "format": "qcow2"}
    return t


def _vm(template, name="web-1", **fields):
    """A VM as the API makes it (vms.service.start without the enqueue): locked, CREATE_VM."""
    from vms.models import Vm

    vm = Vm(name=name, template=template, host=template.host, **fields)
    vm.full_clean(validate_constraints=False)
    vm.save()
    op = HostJob.create(template.host, JobAction.CREATE_VM, target=f"vm:{vm.pk}", description="create")
    Vm.objects.filter(pk=vm.pk).update(job=op)
    return Vm.objects.get(pk=vm.pk)


def _nothing_left(fake, template, vm_pk):
    from vms.models import Vm

    assert not Vm.objects.filter(pk=vm_pk).exists()
    template_vols = {str(d.volume_id) for d in template.disks.all()}
    assert {str(v) for v in Volume.objects.values_list("pk", flat=True)} == template_vols
    assert set(fake.volumes) == template_vols, "no VM volume left on the host"
    assert not fake.seeds
    assert not fake.domains


def test_a_thin_vm_is_made_on_overlays_of_the_template_volumes(fake, template):
    from vms import flow
    from vms.models import Vm

    vm = _vm(template, hostname="web-1.example", ssh_authorized_keys=[USER_KEY], root_password_hash=HASH)
    flow.run(vm.pk)
    vm = Vm.objects.get(pk=vm.pk)
    assert (vm.status, vm.phase) == ("ok", "DONE")
    assert HostJob.objects.get(pk=vm.job_id).status == JobStatus.DONE
    assert vm.root_password_hash == "", "the hash is cleared once the seed carries it"
    assert vm.root_password_set is True
    assert vm.identity_appliance is False, "a template sealed by vmseal needs no appliance"
    assert not fake.started("run")
    assert "no appliance" in HostJob.objects.get(pk=vm.job_id).log
    disks = list(vm.disks.select_related("volume", "template_volume"))
    assert [d.target for d in disks] == ["vda", "vdb"]
    for d in disks:
        assert d.volume.parent_id == d.template_volume_id
        assert d.volume.path == f"/var/lib/vmseal/vms/{d.volume_id}.qcow2"
        assert fake.volumes[str(d.volume_id)]["parent"] == str(d.template_volume_id)
        assert d.volume.meta()["parent"] == str(d.template_volume_id)
    verbs = [c[0] for c in fake.calls if c[0] in ("job-start", "job-status")]
    assert verbs[:2] == ["job-start", "job-start"], "both disks' clones run on the host at once"
    created = fake.started("create-volume")
    assert [(a.pool, a.parent, a.parent_pool, a.source) for a in created] == [
        ("/var/lib/vmseal/vms", str(d.template_volume_id), "/var/lib/vmseal/templates", None) for d in disks]
    [seed] = fake.seeds
    assert seed == f"/var/lib/vmseal/vms/{vm.uuid}.seed.iso"
    assert fake.seeds[seed][0x8001:0x8006] == b"CD001"
    [(name, dom)] = fake.domains.items()
    assert (name, dom["uuid"], dom["state"]) == ("web-1", str(vm.uuid), "shut off")
    for d in disks:
        assert d.volume.path in dom["xml"]
    assert seed in dom["xml"]
    assert f"/var/lib/vmseal/console/{vm.uuid}.log" in dom["xml"]
    assert "52:54:00:12:34:56" not in dom["xml"], "a new MAC, not the source's"
    assert HASH not in HostJob.objects.get(pk=vm.job_id).log
    assert all(HASH not in " ".join(c) for c in fake.calls), "the hash is in no argv"


def test_a_full_vm_copies_the_template_volumes_and_starts_when_asked(fake, template):
    from vms import flow
    from vms.models import Vm

    vm = _vm(template, clone="full", start=True)
    flow.run(vm.pk)
    vm = Vm.objects.get(pk=vm.pk)
    assert (vm.status, vm.phase) == ("ok", "DONE")
    assert vm.hostname == "web-1", "the hostname defaults to the name"
    created = fake.started("create-volume")
    tvols = {d.volume.path for d in template.disks.select_related("volume")}
    assert {a.source for a in created} == tvols
    assert all(a.parent is None for a in created)
    assert all(d.volume.parent_id is None for d in vm.disks.select_related("volume"))
    assert fake.domains["web-1"]["state"] == "running"


def test_an_unsealed_template_gets_one_virt_customize_with_the_hash_in_a_file(fake, template):
    from templates.models import Template
    from vms import flow
    from vms.models import Vm

    Template.objects.filter(pk=template.pk).update(sealed=False, seal=False)
    vm = _vm(template, ssh_authorized_keys=[USER_KEY], root_password_hash=HASH)
    flow.run(vm.pk)
    vm = Vm.objects.get(pk=vm.pk)
    assert (vm.status, vm.identity_appliance) == ("ok", True)
    [run] = fake.started("run")
    argv = run.argv[1:] if run.argv[:1] == ["--"] else run.argv
    assert argv[0] == "virt-customize"
    assert sorted(run.writable) == sorted(str(d.volume_id) for d in vm.disks.all())
    assert HASH not in " ".join(argv)
    [files] = [f for f in fake.files.values() if f]
    text = files["identity.cmds"]
    assert "hostname web-1\n" in text
    assert f"ssh-inject root:string:{USER_KEY}\n" in text
    assert "\\$6\\$saltsalt\\$" in text
    assert "virt-customize ran" in HostJob.objects.get(pk=vm.job_id).log


@pytest.mark.parametrize("where", ["job:create-volume", "write-seed", "define_domain", "start_domain"])
def test_a_failure_in_any_step_leaves_nothing(fake, template, where):
    from vms import flow

    vm = _vm(template, start=True)
    seen = []

    def fail(args):
        if where == "job:create-volume" and seen:  # the second disk: the first one exists
            raise HostCommandFailed("disk full")
        seen.append(args)
        if where != "job:create-volume":
            raise HostCommandFailed(f"{where} broke")

    fake.when(where, fail)
    flow.run(vm.pk)
    op = HostJob.objects.get(pk=vm.job_id)
    assert op.status == JobStatus.FAILED
    assert "failed" in op.error
    _nothing_left(fake, template, vm.pk)
    assert "rollback done" in op.log


def test_a_domain_of_the_same_name_on_the_host_is_refused_and_never_touched(fake, template):
    from vms import flow

    fake.domains["web-1"] = {"uuid": "11111111-2222-4333-8444-555555555555", "state": "running", "xml": "<domain/>"}
    vm = _vm(template)
    flow.run(vm.pk)
    op = HostJob.objects.get(pk=vm.job_id)
    assert op.status == JobStatus.FAILED
    assert "has a VM named 'web-1' already" in op.error
    assert fake.domains["web-1"]["state"] == "running", "someone else's domain is left as it was"
    assert not [c for c in fake.calls if c[0] in ("destroy_domain", "undefine_domain")]


def test_a_template_that_is_no_longer_usable_fails_the_flow_before_anything_is_made(fake, template):
    from templates.models import Template
    from vms import flow

    vm = _vm(template)
    Template.objects.filter(pk=template.pk).update(hardware="")
    flow.run(vm.pk)
    op = HostJob.objects.get(pk=vm.job_id)
    assert op.status == JobStatus.FAILED
    assert "hardware" in op.error
    assert not fake.started("create-volume")
    _nothing_left(fake, template, vm.pk)


def test_a_flow_resumed_after_its_worker_died_runs_nothing_twice(fake, template):
    """The worker dies in IDENTITY (after the disks were made): a new worker resumes there."""
    from vms import flow
    from vms.models import Vm

    class Died(BaseException):
        pass

    def die(_args):
        raise Died()

    fake.when("write-seed", die)
    vm = _vm(template)
    with pytest.raises(Died):
        flow.run(vm.pk)
    row = Vm.objects.get(pk=vm.pk)
    assert (row.status, row.phase) == ("locked", "IDENTITY")
    assert row.lease_expires is None  # released by the finally of run (a killed process would let it expire)
    fake._hooks.clear()
    flow.run(vm.pk)
    row = Vm.objects.get(pk=vm.pk)
    assert (row.status, row.phase) == ("ok", "DONE")
    assert len(fake.started("create-volume")) == 2, "the disks were not made twice"
    assert len(fake.domains) == 1


def test_the_sweeper_resumes_orphaned_vm_flows(fake, template, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    from sealing import tasks
    from vms.models import Vm

    vm = _vm(template)
    Vm.objects.filter(pk=vm.pk).update(updated=timezone.now() - timedelta(minutes=1))
    queued = []
    monkeypatch.setattr(tasks, "async_task", lambda name, pk, **kw: queued.append((name, pk)))
    assert tasks.sweep() == 1
    assert queued == [("vms.tasks.run_vm_flow", vm.pk)]


def test_a_cancel_rolls_the_vm_back(fake, template):
    from vms import flow

    vm = _vm(template)

    def cancel(_args):
        HostJob.objects.get(pk=vm.job_id).cancel("stop it")

    fake.when("write-seed", cancel)
    flow.run(vm.pk)
    op = HostJob.objects.get(pk=vm.job_id)
    assert (op.status, op.error_code) == (JobStatus.ABORTED, "aborted")
    _nothing_left(fake, template, vm.pk)


def test_a_rollback_that_cannot_delete_a_volume_keeps_the_vm_for_the_sweeper(fake, template):
    from vms import flow
    from vms.models import Vm

    vm = _vm(template)
    fake.when("define_domain", lambda _xml: (_ for _ in ()).throw(HostCommandFailed("no")))
    fake.undeletable = ALL
    flow.run(vm.pk)
    row = Vm.objects.get(pk=vm.pk)
    assert (row.status, row.phase) == ("failed", "CLEANUP_FAILED")
    assert all(d.volume.legality == "ILLEGAL" for d in row.disks.select_related("volume"))
    fake.undeletable = set()
    flow.run(vm.pk)  # the sweeper's retry
    _nothing_left(fake, template, vm.pk)


def _done_vm(fake, template, **fields):
    from vms import flow
    from vms.models import Vm

    vm = _vm(template, **fields)
    flow.run(vm.pk)
    return Vm.objects.get(pk=vm.pk)


def test_delete_refuses_a_running_vm_unless_forced_and_never_touches_the_template(fake, template):
    from sealing.service import Refused
    from vms import flow, service
    from vms.models import Vm

    vm = _done_vm(fake, template, start=True)
    with pytest.raises(Refused) as e:
        service.request_delete(vm)
    assert (e.value.status, e.value.code) == (409, "vm_running")
    assert Vm.objects.get(pk=vm.pk).status == "ok"
    op = service.request_delete(Vm.objects.get(pk=vm.pk), force=True)
    flow.run(vm.pk)
    assert HostJob.objects.get(pk=op.pk).status == JobStatus.DONE
    assert ["destroy_domain", "web-1"] in fake.calls
    _nothing_left(fake, template, vm.pk)
    tvols = {str(d.volume_id) for d in template.disks.all()}
    assert {a.id for a in fake.started("delete-volume")}.isdisjoint(tvols), "the template's volumes never deleted"


def test_a_vm_started_after_its_delete_was_asked_is_refused_by_the_worker(fake, template):
    from vms import flow, service
    from vms.models import Vm

    vm = _done_vm(fake, template)
    op = service.request_delete(vm)
    fake.domains["web-1"]["state"] = "running"  # started between the request and the worker
    flow.run(vm.pk)
    op = HostJob.objects.get(pk=op.pk)
    assert (op.status, op.error_code) == (JobStatus.FAILED, "vm_running")
    row = Vm.objects.get(pk=vm.pk)
    assert row.status == "ok"
    assert fake.domains["web-1"]["state"] == "running"


def test_a_template_backing_thin_vms_cannot_be_deleted(fake, template):
    from sealing.service import Refused, request_delete

    _done_vm(fake, template)
    with pytest.raises(Refused) as e:
        request_delete(template)
    assert (e.value.status, e.value.code) == (409, "template_in_use")
    assert "web-1 (thin)" in e.value.message
    template.refresh_from_db()
    assert template.status == "ok"


def test_the_worker_refuses_a_template_delete_when_a_thin_vm_came_after_the_request(fake, template):
    """A delete locked without the request's check (as if the VM came in between): the worker finds the
    thin VM's volumes (their parent is one of the template's volumes, read through Volume.parent, no import
    of vms in sealing) and refuses."""
    from django.db.models import ProtectedError

    from sealing import flow as tflow

    _done_vm(fake, template)
    op = HostJob.create(template.host, JobAction.DELETE_TEMPLATE, target=f"template:{template.pk}", description="d")
    template.lock_for_delete(op)
    tflow.run(template.pk)
    op.refresh_from_db()
    assert (op.status, op.error_code) == (JobStatus.FAILED, "template_in_use")
    assert "web-1 (thin)" in op.error
    assert not fake.started("delete-volume"), "nothing of the template deleted on the host"
    tvol = template.disks.first().volume
    with pytest.raises(ProtectedError):  # and the database refuses too
        tvol.delete()


def test_deleting_a_template_leaves_its_full_clones_with_no_template(fake, template):
    from sealing import flow as tflow
    from sealing.service import request_delete
    from vms.models import Vm

    vm = _done_vm(fake, template, clone="full")
    op = request_delete(template)
    tflow.run(template.pk)
    op.refresh_from_db()
    assert op.status == JobStatus.DONE
    row = Vm.objects.get(pk=vm.pk)
    assert row.template_id is None  # Vm.template on_delete=SET_NULL
    assert all(d.volume is not None for d in row.disks.select_related("volume"))


def test_every_app_registers_its_flow_for_the_sweeper():
    from sealing import engine
    from templates.models import Template
    from vms.models import Vm

    assert {(k, f.model, f.task) for k, f in engine.FLOWS.items()} == {
        ("template", Template, "sealing.tasks.run_template_flow"), ("vm", Vm, "vms.tasks.run_vm_flow")}
