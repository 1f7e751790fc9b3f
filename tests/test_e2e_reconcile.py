"""The host is the truth, on a real test host: templates made by the real flow (seal=false: copy, then
SHARED; no virt-sysprep), then behind the app's back one volume's files removed, another's metadata
edited, an unknown file and an unknown volume planted; host_scan reports exactly those, mirrors the
edited metadata, fails the missing volume and its template, leaves a volume an operation holds alone
and deletes nothing; the admin action then removes the unknown volume, with its reason. The host's VM
pool is scanned too: a VM's volume gone is reported missing, a stray file unknown, the VM's seed known."""

from __future__ import annotations

import io
import json
import logging
import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest

from tests.utils.api import add_host, superuser_api
from tests.utils.jobs import ensure_schedules, wait_jobs

pytestmark = pytest.mark.e2e
POOL = "/var/lib/vmseal/rc"
VM_POOL = "/var/lib/vmseal/rc-vms"


@pytest.fixture(scope="module")
def rc(test_host, qcluster, callback_server, django_db_blocker):
    from django.utils import timezone
    from django_q.models import Schedule

    from hostjobs import transport

    with django_db_blocker.unblock():
        user, api = superuser_api("rc")
        host = add_host(api, test_host, "rc", POOL, vm_pool_path=VM_POOL)
        disks = test_host.define_vm("rc-src", "one")
        # The periodic scan must not run between the edits below and the scan this test runs.
        ensure_schedules(due_now=())  # as the migrations made them (an earlier test's flush removes them)
        scheduled = Schedule.objects.filter(name="vmseal-host-scan")
        next_run = scheduled.values_list("next_run", flat=True).first()
        scheduled.update(next_run=timezone.now() + timedelta(days=1))
        try:
            yield SimpleNamespace(api=api, th=test_host, host=host, user=user, source=disks[0])
        finally:
            scheduled.update(next_run=next_run)
            transport.close(host)


def volume_of(name):
    from volumes.models import Volume

    return Volume.objects.get(disk__template__name=name)


def write_meta(th, vol_id, **changes):
    path = f"{POOL}/{vol_id}.meta"
    meta = json.loads(th.exec("cat", path).stdout)
    meta.update(changes)
    th.exec("sh", "-c", f"cat > {path}.new && mv {path}.new {path}", input=json.dumps(meta))
    return meta


def scan(*args):
    from django.core.management import call_command

    out = io.StringIO()
    call_command("host_scan", "rc", *args, stdout=out)
    return out.getvalue()


def test_host_scan_reports_the_drift_and_fixes_what_is_safe(rc, dbx):
    from django.utils import timezone
    from django_q.models import Schedule

    from hostjobs import hostops
    from sealing import tasks
    from templates.models import Template
    from volumes.models import UnknownVolume, Volume

    ops = []
    for name in ("rc-gone", "rc-edited", "rc-busy", "rc-same"):
        r = rc.api.post("/api/templates/", {"name": name, "host": rc.host.pk, "vm": "rc-src", "seal": False},
                        format="json")
        assert r.status_code == 202, r.content
        ops.append(r.json()["id"])
    for job in wait_jobs(rc.api, ops, timeout=300).values():
        assert job["status"] == "done", job["error"]
    gone, edited, busy, same = (volume_of(n) for n in ("rc-gone", "rc-edited", "rc-busy", "rc-same"))
    assert (edited.type, edited.legality, edited.generation) == ("SHARED", "LEGAL", 1)

    # Behind the app's back:
    rc.th.exec("rm", f"{POOL}/{gone.id}.qcow2", f"{POOL}/{gone.id}.meta")
    write_meta(rc.th, edited.id, legality="ILLEGAL", generation=2)
    write_meta(rc.th, busy.id, generation=5)
    rc.th.exec("sh", "-c", f"echo planted > {POOL}/notes.txt")
    vm_gone = vm_with_volume(rc)  # a VM whose disk is gone from the host; its seed is there
    rc.th.exec("sh", "-c", f"mkdir -p {VM_POOL} && echo seed > {VM_POOL}/{vm_gone.uuid}.seed.iso "
                           f"&& echo stray > {VM_POOL}/stray.txt")
    stranger = str(uuid.uuid4())
    made = rc.th.exec("/usr/bin/python3", f"{hostops.remote_dir()}/vmseal_host.py", "create-volume", "--pool", POOL,
                      "--id", stranger, "--source", rc.source, "--source-format", "qcow2")
    assert json.loads(made.stdout.splitlines()[-1])["legality"] == "LEGAL"
    # An operation holds rc-busy: its lease is held by a (pretend) worker and its job runs.
    Template.objects.filter(name="rc-busy").update(status="locked", lease_expires=timezone.now() + timedelta(hours=1),
                                                   lease_owner="rc-test")
    try:
        dry = json.loads(scan("--json", "--dry-run"))
        assert dry["dry_run"]
        assert len(dry["changed"]) == 3  # the edited volume, the missing one, its template: would change
        assert Volume.objects.get(pk=edited.pk).legality == "LEGAL", "a dry run changes nothing"
        assert Template.objects.get(name="rc-gone").status == "ok"
        assert not UnknownVolume.objects.exists()

        report = json.loads(scan("--json"))
        assert report["missing"] == [{"id": str(gone.id), "why": "no file of it in the pool"}]
        assert report["differs"] == [{"id": str(edited.id), "db": {"legality": "LEGAL", "generation": 1},
                                      "host": {"legality": "ILLEGAL", "generation": 2}}]
        assert [(u["id"], sorted(u["files"])) for u in report["unknown_volumes"]] == [
            (stranger, [f"{stranger}.meta", f"{stranger}.qcow2"])]
        assert [f["name"] for f in report["unknown_files"]] == ["notes.txt"]
        assert report["skipped"] == [str(busy.id)]
        assert (report["host_volumes"], report["db_volumes"]) == (4, 4)  # gone's files went, the stranger came
        vm_vol = str(vm_gone.disks.get().volume_id)
        vp = report["vm_pool"]
        assert (vp["pool"], vp["missing"]) == (VM_POOL, [{"id": vm_vol, "why": "no file of it in the pool"}])
        assert [f["name"] for f in vp["unknown_files"]] == ["stray.txt"], "the VM's seed is a known file"
        assert (vp["unknown_volumes"], vp["differs"]) == ([], [])
        assert Volume.objects.get(pk=vm_vol).legality == "ILLEGAL"
        assert set(rc.th.pool_files(VM_POOL)) == {f"{vm_gone.uuid}.seed.iso", "stray.txt"}, "nothing deleted"

        e = Volume.objects.get(pk=edited.pk)
        assert (e.legality, e.generation, e.error) == ("ILLEGAL", 2, ""), "the host's metadata is mirrored"
        g = Volume.objects.get(pk=gone.pk)
        assert g.legality == "ILLEGAL"
        assert "no file of it in the pool" in g.error
        t = Template.objects.get(name="rc-gone")
        assert t.status == "failed"
        assert str(gone.id) in t.error
        assert "host scan" in t.error
        assert Template.objects.get(name="rc-edited").status == "ok"
        assert Volume.objects.get(pk=busy.pk).generation == 1, "a volume an operation holds is left alone"
        assert Volume.objects.get(pk=same.pk).generation == 1
        assert rc.th.exec("cat", f"{POOL}/notes.txt").stdout == "planted\n", "an unknown file is never touched"
        files = rc.th.pool_files(POOL)
        assert {f"{stranger}.qcow2", f"{stranger}.meta"} <= set(files), "an unknown volume is reported, not deleted"
        assert UnknownVolume.objects.filter(host=rc.host, volume_id=stranger).exists()

        # Scanning again reports the same drift and changes nothing more.
        text = scan()
        assert f"missing         {gone.id}  no file of it in the pool" in text
        assert "unknown file    notes.txt" in text
        assert f"pool {VM_POOL}: 0 volume(s) on the host, 1 in the database" in text
        assert "unknown file    stray.txt" in text
        assert "changed " not in text
        assert "no file was deleted" in text
    finally:
        Template.objects.filter(name="rc-busy").update(status="ok", lease_expires=None, lease_owner="")

    # The periodic task: scheduled by the migration, scanning every host and saying what drifted.
    sched = Schedule.objects.get(name="vmseal-host-scan")
    assert (sched.func, sched.minutes, sched.repeats) == ("sealing.tasks.scan_hosts", 10, -1)
    out = tasks.scan_hosts([rc.host.pk])
    assert out["rc"].startswith("drift: 1 unknown volume(s), 1 unknown file(s), 1 missing, 1 different"), out
    assert "VM pool: 0 unknown volume(s), 1 unknown file(s), 1 missing" in out["rc"]
    assert Volume.objects.get(pk=busy.pk).generation == 5, "released by its operation, the volume is mirrored"


def vm_with_volume(rc):
    """A VM row (ok, done) with one disk in the VM pool, as the VM flow leaves it; no file is made."""
    from vms.models import Vm, VmDisk
    from volumes.models import Volume

    vm = Vm.objects.create(name="rc-vm", host=rc.host, hostname="rc-vm", status="ok", phase="DONE")
    vol = Volume(host=rc.host, type="LEAF", legality="LEGAL")
    vol.path = f"{VM_POOL}/{vol.id}.qcow2"
    vol.save()
    VmDisk.objects.create(vm=vm, index=0, target="vda", volume=vol)
    return vm


def test_the_admin_action_removes_an_unknown_volume_with_its_reason(rc, dbx, caplog):
    from django.test import Client

    from hostjobs.models import HostJob
    from volumes.models import UnknownVolume

    unknown = UnknownVolume.objects.get(host=rc.host)
    vol_id = str(unknown.volume_id)
    client = Client()
    client.force_login(rc.user)
    url = "/admin/volumes/unknownvolume/"
    chosen = {"action": "remove_from_host", "_selected_action": [unknown.pk]}

    page = client.post(url, chosen)
    assert page.status_code == 200
    assert "Reason (required)" in page.content.decode()
    page = client.post(url, {**chosen, "confirm": "yes", "reason": "  "})
    assert "A reason is required" in page.content.decode()
    assert f"{vol_id}.qcow2" in rc.th.pool_files(POOL), "nothing is removed without a reason"

    with caplog.at_level(logging.WARNING, logger="vmseal.reconcile"):
        r = client.post(url, {**chosen, "confirm": "yes", "reason": "left by a manual copy (ticket 42)"})
    assert r.status_code == 302
    files = rc.th.pool_files(POOL)
    assert not [n for n in files if n.startswith(vol_id)], "the unknown volume is gone from the host"
    assert "notes.txt" in files, "only that volume was removed"
    job = HostJob.objects.get(action="delete", target=f"volume:{vol_id}")
    assert job.status == "done"
    assert "by rc (admin): left by a manual copy (ticket 42)" in job.description
    assert "left by a manual copy (ticket 42)" in job.log
    assert any(vol_id in m and "ticket 42" in m for m in caplog.messages)
    assert not UnknownVolume.objects.filter(pk=unknown.pk).exists()
    assert json.loads(scan("--json"))["unknown_volumes"] == []
