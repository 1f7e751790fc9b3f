"""Durable host jobs, on a real test host: push and poll, the host's link down past a job's deadline,
cancel, delete. (A worker killed, libvirtd or sshd killed, the link flapping and the source VM started,
in COPY_DISKS and in SEAL, are cells of the fault matrix: test_faults.py.)"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest

from tests.utils.api import add_host, superuser_api
from tests.utils.jobs import ensure_schedules, wait_jobs
from tests.utils.paths import ROOT

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hj(test_host, qcluster, callback_server, django_db_blocker):
    from hostjobs import transport
    from hostjobs.models import Host

    with django_db_blocker.unblock():
        _, api = superuser_api("hj")
        ns = SimpleNamespace(api=api, th=test_host, add_host=functools.partial(add_host, api, test_host),
                             host=add_host(api, test_host, "hj", "/var/lib/vmseal/hj"))
        for vm in ("hj-link", "hj-cancel", "hj-plain"):
            test_host.define_vm(vm, "one")
        try:
            yield ns
        finally:
            for h in Host.objects.all():
                transport.close(h)


def request(ns, host, name, vm, seal=True):
    r = ns.api.post("/api/templates/", {"name": name, "host": host.pk, "vm": vm, "seal": seal}, format="json")
    assert r.status_code == 202, r.content
    return r.json()["id"]


def wait_child(op_id, action, status="running", timeout=120):
    """The op's child job of ``action`` once its host has confirmed it (it runs there)."""
    from hostjobs.models import HostJob

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = HostJob.objects.filter(parent_id=op_id, action=action, status=status, last_seen__isnull=False).first()
        if job:
            return job
        time.sleep(0.2)
    raise AssertionError(f"no {status} {action} job under {op_id} after {timeout}s")


def host_state(th, job_id):
    out = th.exec("cat", f"/var/lib/vmseal/jobs/{job_id}/state.json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def host_modes(th, top):
    """What is under ``top`` on the host, itself as ".": relative path -> (type d/f, octal mode, owner)."""
    out = th.exec("find", top, "-printf", "%y %m %u %P\n").stdout
    return {(rel or "."): (kind, mode, owner)
            for kind, mode, owner, rel in (line.split(" ", 3) for line in out.splitlines())}


def assert_nothing_left(ns, host, template_name):
    from templates.models import Template
    from volumes.models import Volume

    assert not Template.objects.filter(name=template_name).exists()
    known = {v.path.rsplit("/", 1)[1] for v in Volume.objects.filter(host=host)}
    files = {n for n in ns.th.pool_files(host.pool_path) if n.endswith(".qcow2")}
    assert files == known, "the pool holds exactly the volumes the DB knows"
    assert not Volume.objects.filter(host=host, legality="LEGAL", disk__isnull=True).exists()


def test_with_push_lost_jobs_complete_by_polling(hj, dbx):
    from hostjobs.models import CallbackNonce, HostJob

    host = hj.add_host("hj-poll", "/var/lib/vmseal/poll", callback_url="http://10.211.0.1:9/api/callbacks/")
    op_id = request(hj, host, "hj-polled", "hj-plain", seal=False)
    job = wait_jobs(hj.api, [op_id], timeout=120)[op_id]
    assert job["status"] == "done", job["error"]
    children = HostJob.objects.filter(parent_id=op_id)
    assert children.count() == 2  # one disk: its copy, then update_volume type=SHARED
    assert all(c.status == "done" and c.last_seen for c in children)
    assert CallbackNonce.objects.filter(host=host).count() == 0, "nothing was pushed: all of it was polled"


def test_link_down_past_the_deadline_fails_then_cleans_up_when_back(hj, dbx):
    from django.utils import timezone

    from hostjobs.models import HostJob
    from templates.models import Template
    from volumes.models import Volume

    info = json.loads(subprocess.run([sys.executable, str(ROOT / "scripts" / "testhosts.py"), "info", hj.th.name],
                                     capture_output=True, text=True, check=True).stdout)
    op_id = request(hj, hj.host, "hj-linkdown", "hj-link")
    seal = wait_child(op_id, "seal")
    HostJob.objects.filter(pk=seal.pk).update(deadline=timezone.now() + timedelta(seconds=4))
    ensure_schedules()  # the sweeper runs meanwhile: it must not take the blocked flow for orphaned
    subprocess.run(["ip", "link", "set", info["veth"], "down"], check=True)
    try:
        # The worker spends the outage in SSH commands that time out (up to 30 s each, more than the
        # 20 s lease); its lease must stay alive throughout, or a second worker would run the flow too.
        lapses, end = [], time.monotonic() + 180
        while time.monotonic() < end and not HostJob.objects.get(pk=op_id).is_terminal:
            lease = Template.objects.filter(name="hj-linkdown").values_list("lease_expires", flat=True).first()
            if lease is not None and lease < timezone.now() - timedelta(seconds=1):
                lapses.append(timezone.now() - lease)
            time.sleep(1)
        job = wait_jobs(hj.api, [op_id], timeout=5)[op_id]
        assert not lapses, f"the flow's lease lapsed while its worker was alive: {lapses}"
        assert job["status"] == "failed"
        assert "deadline" in job["error"]
        assert job["log"].count("SEAL failed") == 1, "one worker rolled back, once"
        t = Template.objects.get(name="hj-linkdown")
        assert (t.status, t.phase) == ("failed", "CLEANUP_FAILED")
        vols = Volume.objects.filter(disk__template=t)
        vol_ids = [str(v.pk) for v in vols]
        assert vol_ids
        assert all(v.legality == "ILLEGAL" for v in vols), "what could not be deleted stays ILLEGAL"
    finally:
        subprocess.run(["ip", "link", "set", info["veth"], "up"], check=True)
    ensure_schedules()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and Template.objects.filter(name="hj-linkdown").exists():
        time.sleep(1)
    assert_nothing_left(hj, hj.host, "hj-linkdown")
    assert not hj.th.running(str(seal.pk)), "the seal's runner is gone"
    for vol_id in vol_ids:
        assert not hj.th.running(vol_id), "nothing works on a deleted volume"


def test_cancel_during_seal_stops_virt_sysprep_and_rolls_back(hj, dbx):
    from volumes.models import Volume

    op_id = request(hj, hj.host, "hj-cancelled", "hj-cancel")
    seal = wait_child(op_id, "seal")
    vol_ids = [str(v) for v in Volume.objects.filter(disk__template__name="hj-cancelled").values_list("pk", flat=True)]
    assert vol_ids
    # for test_template_pools_volumes_and_jobs_are_readable_by_root_only: the host while a seal runs
    hj.during_seal = {"pool": host_modes(hj.th, hj.host.pool_path), "jobs": host_modes(hj.th, "/var/lib/vmseal/jobs"),
                      "vol_ids": vol_ids, "seal": str(seal.pk)}
    time.sleep(2)
    r = hj.api.post(f"/api/jobs/{op_id}/cancel/")
    assert r.status_code == 202
    job = wait_jobs(hj.api, [op_id], timeout=120)[op_id]
    assert job["status"] == "aborted"
    assert "cancelled by hj" in job["error"]
    assert [c["status"] for c in job["children"] if c["action"] == "seal"] == ["aborted"]
    assert not hj.th.running(str(seal.pk)), "nothing of the seal still runs"
    for vol_id in vol_ids:  # neither virt-sysprep nor its appliance has the template's disks open
        assert not hj.th.running(vol_id), f"something still runs on volume {vol_id}"
    assert_nothing_left(hj, hj.host, "hj-cancelled")


def test_template_pools_volumes_and_jobs_are_readable_by_root_only(hj, dbx):
    """While a seal runs (recorded by the cancel test): the pool 0711 (searchable, so qemu reaches a thin
    VM's backing file; not listable), the writable volumes and their metadata 0600, the jobs directory
    and the seal's job directory 0700, its spec (the callback secret),
    state and log 0600. Once SHARED (the poll-only test's template): disk and metadata 0400. Before:
    libvirt's pool 0711, volumes 0644 then 0444, metadata, job state and log 0644."""
    from hostjobs.models import Host

    during = getattr(hj, "during_seal", None)
    assert during, "test_cancel_during_seal_stops_virt_sysprep_and_rolls_back records the host during its seal"
    pool, jobs, seal = during["pool"], during["jobs"], during["seal"]
    expected = {".", *(f"{v}.{ext}" for v in during["vol_ids"] for ext in ("qcow2", "meta"))}
    assert expected <= set(pool), f"not in the pool during the seal: {sorted(expected - set(pool))}"
    assert {".", seal, f"{seal}/spec.json", f"{seal}/state.json", f"{seal}/log"} <= set(jobs)
    for where, seen, d in (("pool", pool, "711"), ("jobs", jobs, "700")):
        wrong = {p: m for p, m in seen.items() if m != {"d": ("d", d, "root"), "f": ("f", "600", "root")}.get(m[0])}
        assert not wrong, f"{where} during the seal: readable by others, want {d} dirs / 0600 files: {wrong}"

    shared = host_modes(hj.th, Host.objects.get(name="hj-poll").pool_path)
    assert shared["."] == ("d", "711", "root")
    disks = [n for n in shared if n.endswith(".qcow2")]
    assert disks, "the poll-only test's template is there"
    for name in disks:
        assert shared[name] == ("f", "400", "root"), f"{name}: a SHARED disk is root's, read-only"
        assert shared[name.replace(".qcow2", ".meta")] == ("f", "400", "root"), f"{name}: its metadata too"


def test_deleting_a_template_deletes_its_volumes_on_the_host(hj, dbx):
    from hostjobs.models import Host
    from templates.models import Template

    t = Template.objects.get(name="hj-polled")  # made by the poll-only test, on its own pool
    host = Host.objects.get(name="hj-poll")
    assert any(n.endswith(".qcow2") for n in hj.th.pool_files(host.pool_path))
    r = hj.api.delete(f"/api/templates/{t.pk}/")
    assert r.status_code == 202
    job = wait_jobs(hj.api, [r.json()["id"]], timeout=120)[r.json()["id"]]
    assert job["status"] == "done", job["error"]
    assert [c["action"] for c in job["children"]] == ["delete"]
    assert not Template.objects.filter(pk=t.pk).exists()
    assert not [n for n in hj.th.pool_files(host.pool_path) if n.endswith((".qcow2", ".meta"))]
