"""End to end on a real test host: a sealed template (one appliance launch), then a thin and a full VM
from it through the API -> django-q2 -> the VM flow -> the host's helper and libvirt. The VMs are defined,
not booted (booting them is the guest piece's e2e). Once per module; each test asserts one property.

Checked on the host itself: each VM volume's qemu-img info (thin: backing file = the template volume, its
format given; full: no backing file), the seed ISO (0600, labelled cidata), the console directory (0700),
the domains libvirt has, the template volumes' sha256 before and after (never written), the template's
delete protection (409), and a VM delete removing its domain, volumes and seed."""

from __future__ import annotations

import json

import pytest

from tests.utils.api import add_host, superuser_api
from tests.utils.guest import probe
from tests.utils.jobs import wait_jobs

pytestmark = pytest.mark.e2e
POOL = "/var/lib/vmseal/vmt"
VM_POOL = "/var/lib/vmseal/vms"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK vm-e2e@example"
HASH = "$6$e2esaltsalt$" + "Q" * 86


def _img(th, path: str) -> dict:
    return json.loads(th.exec("qemu-img", "info", "-U", "--output=json", path).stdout)


def _files(th, directory: str) -> dict[str, str]:
    out = th.exec("sh", "-c", f"cd {directory} 2>/dev/null && stat -c '%n %a' * 2>/dev/null || true").stdout
    return dict(line.rsplit(" ", 1) for line in out.splitlines() if line.strip())


def _domains(th) -> set[str]:
    return set(th.virsh("list", "--all", "--name").stdout.split())


@pytest.fixture(scope="module")
def vmrun(test_host, qcluster, callback_server, django_db_blocker):
    from hostjobs import transport
    from vms.models import Vm
    from volumes.models import Volume

    th = test_host
    with django_db_blocker.unblock():
        _user, api = superuser_api("vme")
        host = add_host(api, th, "vmh", POOL)
        th.define_vm("vm-src", "one")
        try:
            r = api.post("/api/templates/", {"name": "vm-tpl", "host": host.pk, "vm": "vm-src", "seal": True},
                         format="json")
            assert r.status_code == 202, r.content
            [tjob] = wait_jobs(api, [r.json()["id"]], timeout=600).values()
            assert tjob["status"] == "done", tjob
            t = api.get("/api/templates/").json()["results"][0]
            tvols = [d["volume"] for d in api.get(f"/api/templates/{t['id']}/").json()["disks"]]
            tpaths = [v["path"] for v in tvols]
            out = {"th": th, "api": api, "host": host, "template": t, "tpaths": tpaths,
                   "sha_before": th.sha256(tpaths)}

            # two VMs at once, and one whose name a domain on the host has already (refused by the worker)
            jobs = {}
            for name, clone in (("thin-1", "thin"), ("full-1", "full"), ("vm-src", "thin")):
                r = api.post("/api/vms/", {"template": t["id"], "name": name, "clone": clone,
                                           "identity": {"hostname": name, "ssh_authorized_keys": [KEY],
                                                        "root_password_hash": HASH}}, format="json")
                assert r.status_code == 202, r.content
                jobs[name] = r.json()["id"]
            ended = wait_jobs(api, jobs.values(), timeout=600)
            out["jobs"] = {name: ended[jid] for name, jid in jobs.items()}
            out["vms"] = {v["name"]: v for v in api.get(f"/api/vms/?host={host.pk}").json()["results"]}
            out["vm_rows"] = {vm.name: vm for vm in Vm.objects.filter(host=host)}
            out["volumes"] = {
                vm.name: [Volume.objects.get(pk=d.volume_id) for d in vm.disks.all()]
                for vm in Vm.objects.filter(host=host)}
            out["qemu"] = {name: [_img(th, v.path) for v in vols] for name, vols in out["volumes"].items()}
            out["vm_pool"] = _files(th, VM_POOL)
            out["console_mode"] = th.exec("stat", "-c", "%a", "/var/lib/vmseal/console").stdout.strip()
            out["domains"] = _domains(th)
            out["xml"] = {n: th.virsh("dumpxml", n).stdout for n in ("thin-1", "full-1") if n in out["domains"]}
            out["seed_label"] = th.exec("sh", "-c", f"dd if={VM_POOL}/{out['vm_rows']['thin-1'].uuid}.seed.iso "
                                                    "bs=1 skip=32808 count=32 2>/dev/null").stdout.strip()

            # an unsealed template (a copy, no appliance) makes its VM's identity with one virt-customize
            r = api.post("/api/templates/", {"name": "plain-tpl", "host": host.pk, "vm": "vm-src", "seal": False},
                         format="json")
            assert r.status_code == 202, r.content
            [pjob] = wait_jobs(api, [r.json()["id"]], timeout=600).values()
            assert pjob["status"] == "done", pjob
            plain = api.get("/api/templates/?name=plain-tpl").json()["results"][0]
            ppaths = [d["volume"]["path"] for d in api.get(f"/api/templates/{plain['id']}/").json()["disks"]]
            out["plain_sha_before"] = th.sha256(ppaths)
            r = api.post("/api/vms/", {"template": plain["id"], "name": "cust-1",
                                       "identity": {"hostname": "cust-one", "ssh_authorized_keys": [KEY],
                                                    "root_password_hash": HASH}}, format="json")
            assert r.status_code == 202, r.content
            [out["cust_job"]] = wait_jobs(api, [r.json()["id"]], timeout=900).values()
            out["plain_sha_after"] = th.sha256(ppaths)
            cust = Vm.objects.filter(name="cust-1").first()
            out["cust"] = cust
            if cust is not None:
                [cdisk] = [Volume.objects.get(pk=d.volume_id).path for d in cust.disks.all()]
                out["cust_guest"] = probe(th, [cdisk], ["/etc/hostname", "/root/.ssh/authorized_keys", "/etc/shadow",
                                                       "/etc/machine-id"], [])[cdisk]["files"]

            # the template backs thin-1: its delete is refused
            r = api.delete(f"/api/templates/{t['id']}/")
            out["template_delete"] = (r.status_code, r.json())
            # thin-1 deleted: domain, volumes and seed go, the template's stay
            thin = out["vm_rows"]["thin-1"]
            r = api.delete(f"/api/vms/{thin.pk}/")
            assert r.status_code == 202, r.content
            [out["delete_job"]] = wait_jobs(api, [r.json()["id"]], timeout=300).values()
            out["after_delete"] = {"domains": _domains(th), "vm_pool": _files(th, VM_POOL),
                                   "vm_exists": Vm.objects.filter(pk=thin.pk).exists()}
            out["sha_after"] = th.sha256(tpaths)
            yield out
        finally:
            for vm in Vm.objects.filter(host=host):
                api.delete(f"/api/vms/{vm.pk}/?force=true")
            transport.close(host)


def test_both_vms_are_defined_and_the_name_taken_on_the_host_is_refused(vmrun):
    jobs = vmrun["jobs"]
    assert jobs["thin-1"]["status"] == "done", jobs["thin-1"]["error"]
    assert jobs["full-1"]["status"] == "done", jobs["full-1"]["error"]
    assert jobs["vm-src"]["status"] == "failed"
    assert "has a VM named 'vm-src' already" in jobs["vm-src"]["error"]
    assert {"thin-1", "full-1", "vm-src"} <= vmrun["domains"]
    assert set(vmrun["vms"]) == {"thin-1", "full-1"}, "the refused VM left no row"
    assert all(v["status"] == "ok" and v["phase"] == "DONE" for v in vmrun["vms"].values())
    rows = vmrun["vm_rows"]
    for name in ("thin-1", "full-1"):
        assert f"<uuid>{rows[name].uuid}</uuid>" in vmrun["xml"][name]
        assert f"/var/lib/vmseal/console/{rows[name].uuid}.log" in vmrun["xml"][name]
        assert f"{VM_POOL}/{rows[name].uuid}.seed.iso" in vmrun["xml"][name]


def test_thin_disks_are_backed_by_the_template_volume_and_full_ones_by_nothing(vmrun):
    [thin] = vmrun["qemu"]["thin-1"]
    [full] = vmrun["qemu"]["full-1"]
    [tpath] = vmrun["tpaths"]
    assert thin["format"] == "qcow2"
    assert thin["backing-filename"] == tpath
    assert thin["backing-filename-format"] == "qcow2", "the backing format is always given"
    assert full["format"] == "qcow2"
    assert "backing-filename" not in full
    [tv] = vmrun["volumes"]["thin-1"]
    [fv] = vmrun["volumes"]["full-1"]
    assert str(tv.parent_id) in tpath
    assert fv.parent_id is None
    assert (tv.type, tv.legality, fv.type, fv.legality) == ("LEAF", "LEGAL", "LEAF", "LEGAL")


def test_the_vm_pool_seeds_and_console_dir_are_private(vmrun):
    pool, rows = vmrun["vm_pool"], vmrun["vm_rows"]
    for name in ("thin-1", "full-1"):
        assert pool[f"{rows[name].uuid}.seed.iso"] == "600"
        for v in vmrun["volumes"][name]:
            assert pool[f"{v.id}.qcow2"] == "600"
            assert pool[f"{v.id}.meta"] == "600"
    assert vmrun["console_mode"] == "700"
    assert vmrun["seed_label"].startswith("cidata")


def test_the_secret_hash_is_gone_from_the_database_and_the_answers(vmrun):
    for name in ("thin-1", "full-1"):
        vm = vmrun["vm_rows"][name]
        assert (vm.root_password_hash, vm.root_password_set) == ("", True)
        assert vm.identity_appliance is False, "a template sealed by vmseal: no appliance for its VMs"
        assert HASH not in json.dumps(vmrun["vms"][name])
        assert HASH not in json.dumps(vmrun["jobs"][name])


def test_the_template_backing_a_thin_vm_cannot_be_deleted(vmrun):
    status, body = vmrun["template_delete"]
    assert status == 409
    assert "thin-1 (thin)" in body["template"][0]


def test_deleting_a_vm_removes_its_domain_volumes_and_seed_and_never_the_templates(vmrun):
    assert vmrun["delete_job"]["status"] == "done", vmrun["delete_job"]["error"]
    after = vmrun["after_delete"]
    assert not after["vm_exists"]
    assert "thin-1" not in after["domains"]
    assert "full-1" in after["domains"]
    thin = vmrun["vm_rows"]["thin-1"]
    gone = {f"{thin.uuid}.seed.iso"}
    gone |= {f"{v.id}.{ext}" for v in vmrun["volumes"]["thin-1"] for ext in ("qcow2", "meta")}
    assert gone & set(vmrun["vm_pool"]) == gone, "they were there"
    assert not gone & set(after["vm_pool"])
    assert vmrun["sha_after"] == vmrun["sha_before"], "the template's volume files were never written"


def test_an_unsealed_template_gets_one_virt_customize_on_the_vms_own_disk(vmrun):
    job = vmrun["cust_job"]
    assert job["status"] == "done", job["error"]
    assert [c["action"] for c in job["children"]].count("customize") == 1
    assert "virt-customize ran" in job["log"]
    assert HASH not in json.dumps(job), "the hash is in no log or argv the job shows"
    assert vmrun["cust"].identity_appliance is True
    guest = vmrun["cust_guest"]
    assert guest["/etc/hostname"]["head"].strip() == "cust-one"
    assert KEY in guest["/root/.ssh/authorized_keys"]["head"]
    assert guest["/etc/shadow"]["head"].startswith(f"root:{HASH}:")
    assert guest["/etc/machine-id"]["size"] == 0
    assert vmrun["plain_sha_after"] == vmrun["plain_sha_before"], "its backing file was never written"
