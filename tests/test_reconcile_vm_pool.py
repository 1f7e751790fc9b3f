"""Host scans cover the host's VM pool (``report.vm_pool``), on the fake host's protocol with VMs made by
the real VM flow: a VM volume gone from the host is reported missing and marked ILLEGAL, unknown volumes
and files in the VM pool are reported (never removed), a VM's seed is a known file, a busy VM's volumes
are left out, and the template pool is scanned as before. Real host: tests/test_e2e_reconcile.py."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from django.core.management import call_command

from hostjobs import port, runner
from hostjobs.models import Host, HostJob, JobAction
from sealing.reconcile import busy_vm_volume_ids, known_vm_files, scan_host
from tests.fixtures.templates import create_template
from tests.utils.fakehost import FakeHost
from volumes.models import UnknownVolume, Volume

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK"


@pytest.fixture
def fake(db, monkeypatch):
    monkeypatch.setattr(runner, "POLL_MIN", 0.0)
    monkeypatch.setattr(runner, "WATCH", 0.0)
    host = FakeHost()
    host.pool_exists = True
    with port.use(lambda h: host):
        yield host


@pytest.fixture
def template(fake):
    from templates import hardware

    host = Host.objects.create(name="h", address="10.211.0.251", host_key=KEY)
    t = create_template(host, "tpl", disks=2, sealed=True, seal=True, hardware=hardware.scrub(fake.domain_xml("vm")))
    for d in t.disks.select_related("volume"):
        fake.volumes[str(d.volume_id)] = {"id": str(d.volume_id), "type": "SHARED", "legality": "LEGAL",
                                          "generation": d.volume.generation, "parent": None, "format": "qcow2"}
        fake.volume_pools[str(d.volume_id)] = host.pool_path
    return t


def done_vm(template, name="web-1", **fields):
    """A VM made by the real VM flow (on the fake host)."""
    from vms import flow
    from vms.models import Vm

    vm = Vm(name=name, template=template, host=template.host, **fields)
    vm.full_clean(validate_constraints=False)
    vm.save()
    Vm.objects.filter(pk=vm.pk).update(job=HostJob.create(template.host, JobAction.CREATE_VM, target=f"vm:{vm.pk}"))
    flow.run(vm.pk)
    vm = Vm.objects.get(pk=vm.pk)
    assert (vm.status, vm.phase) == ("ok", "DONE")
    return vm


def test_the_vm_pool_is_scanned_with_the_template_pool(fake, template):
    host = template.host
    a, b = done_vm(template, "web-1"), done_vm(template, "web-2", clone="full")
    report = scan_host(host)
    assert not report.drift, report.as_dict()
    vp = report.vm_pool
    assert vp.pool == host.vm_pool_path
    assert (vp.host_volumes, vp.db_volumes) == (4, 4)  # 2 VMs x 2 disks; seeds are known files
    assert (report.host_volumes, report.db_volumes) == (2, 2), "the template pool holds only the template's"
    assert known_vm_files(host) == {f"{a.uuid}.seed.iso", f"{b.uuid}.seed.iso"}

    gone = a.disks.first().volume
    del fake.volumes[str(gone.id)]  # behind the app's back
    fake.seeds[f"{host.vm_pool_path}/{uuid.uuid4()}.seed.iso"] = b"x"  # a seed of no VM
    fake.planted[host.vm_pool_path] = ["notes.txt"]
    stranger = str(uuid.uuid4())
    fake.volumes[stranger] = {"id": stranger, "type": "LEAF", "legality": "LEGAL", "generation": 0, "parent": None,
                              "format": "qcow2"}
    fake.volume_pools[stranger] = host.vm_pool_path

    out = io.StringIO()
    call_command("host_scan", host.name, "--json", "--dry-run", stdout=out)
    dry = json.loads(out.getvalue())
    assert dry["drift"]
    assert len(dry["vm_pool"]["changed"]) == 1  # the missing volume would be marked ILLEGAL
    assert Volume.objects.get(pk=gone.pk).legality == "LEGAL", "a dry run changes nothing"

    report = scan_host(host)
    vp = report.vm_pool
    assert report.drift
    assert not report.own_drift
    assert vp.missing == [{"id": str(gone.id), "why": "no file of it in the pool"}]
    assert sorted(f["name"] for f in vp.unknown_files) == sorted(
        ["notes.txt"] + [p.rsplit("/", 1)[1] for p in fake.seeds if str(a.uuid) not in p and str(b.uuid) not in p])
    assert [u["id"] for u in vp.unknown_volumes] == [stranger]
    g = Volume.objects.get(pk=gone.pk)
    assert (g.legality, "host scan" in g.error) == ("ILLEGAL", True)
    unknown = UnknownVolume.objects.get(host=host)
    assert (str(unknown.volume_id), unknown.pool) == (stranger, host.vm_pool_path)
    assert "VM pool: 1 unknown volume(s), 2 unknown file(s), 1 missing" in report.summary()
    assert stranger in fake.volumes, "nothing removed"
    assert fake.planted[host.vm_pool_path] == ["notes.txt"]

    out = io.StringIO()
    call_command("host_scan", host.name, stdout=out)
    text = out.getvalue()
    assert f"pool {host.vm_pool_path}: 4 volume(s) on the host, 4 in the database" in text
    assert f"missing         {gone.id}  no file of it in the pool" in text
    assert UnknownVolume.objects.filter(host=host).count() == 1, "the template pool's scan keeps the VM pool's"


def test_a_busy_vms_volumes_are_left_out_and_its_seed_being_written_is_known(fake, template):
    from datetime import timedelta

    from django.utils import timezone

    from vms.models import Vm

    host = template.host
    vm = done_vm(template)
    assert busy_vm_volume_ids(host) == set()
    Vm.objects.filter(pk=vm.pk).update(status="locked", lease_expires=timezone.now() + timedelta(hours=1))
    ids = {str(d.volume_id) for d in vm.disks.all()}
    assert busy_vm_volume_ids(host) == ids
    assert f"{vm.uuid}.seed.iso.tmp" in known_vm_files(host)
    for i in ids:
        del fake.volumes[i]
    report = scan_host(host)
    assert report.vm_pool.missing == []
    assert sorted(report.vm_pool.skipped) == sorted(ids)


def test_a_host_without_a_vm_pool_yet_has_no_vm_pool_drift(fake, template):
    report = scan_host(template.host)
    assert report.vm_pool is not None
    assert not report.drift
    assert (report.vm_pool.host_volumes, report.vm_pool.db_volumes) == (0, 0)
