"""The proof that a VM made from a vmseal template is its own machine: BOOT them.

Two real Debian 12 guests (scripts/debguest.py: systemd + openssh-server; one of them with Debian's
cloud-init) become sealed templates through the API on a real test host. From the plain one: two thin
VMs and one full VM; from the cloud-init one: one thin VM; all through ``POST /api/vms/`` with
``"start": true``, so vmseal itself defines and starts them (libvirt's own DAC labelling: qemu runs as
libvirt-qemu, nothing here runs it as root). They boot at once (direct kernel boot with the guest's
own kernel and initrd, TCG), and each one's serial console (logged by the host's virtlogd to
/var/lib/vmseal/console/<uuid>.log) carries one ``VMSEAL-PROBE {json}`` line from the test guest's
probe unit: machine-id, host name, sshd's state, host key and root key fingerprints, cloud-init's status.

Two seals and four boots for the whole module (~4-6 min under TCG on 2 cores); every test asserts one
property of what they showed. Run in the first pass only (marker ``boot``)."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid

import pytest

from tests.utils import boot
from tests.utils.api import add_host, superuser_api
from tests.utils.jobs import wait_jobs

pytestmark = [pytest.mark.e2e, pytest.mark.boot]

IMAGES = "/var/lib/libvirt/images"
POOL = "/var/lib/vmseal/boot"  # this module's own pools on the shared test host
VM_POOL = "/var/lib/vmseal/boot-vms"
VMS = {  # name -> (template, clone, hostname asked for, or None for the default: the name)
    "deb-thin-1": ("plain", "thin", None),
    "deb-thin-2": ("plain", "thin", "web-02"),
    "deb-full-1": ("plain", "full", None),
    "ci-thin-1": ("cloudinit", "thin", "ci-host-1"),
}


def _key_pair(tmp, name: str) -> tuple[str, str]:
    """A fresh SSH public key line and its fingerprint."""
    path = tmp / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@example", "-f", str(path)],
                   check=True)
    fp = subprocess.run(["ssh-keygen", "-lf", f"{path}.pub"], check=True, capture_output=True, text=True)
    return (tmp / f"{name}.pub").read_text().strip(), fp.stdout.split()[1]


def _define_source(th, prefix: str, g: dict) -> None:
    """A shut-off source VM of the cached guest ``g`` on the host (its disk, kernel and initrd copied
    into the host's images)."""
    for f in ("disk.qcow2", "vmlinuz", "initrd.img"):
        shutil.copy(f"{g['dir']}/{f}", th.images / f"{prefix}-{f}")
    xml = boot.domain_xml(prefix, str(uuid.uuid4()), f"{IMAGES}/{prefix}-disk.qcow2",
                          kernel=f"{IMAGES}/{prefix}-vmlinuz", initrd=f"{IMAGES}/{prefix}-initrd.img",
                          cmdline=g["cmdline"])
    (th.images / f"{prefix}.xml").write_text(xml)
    th.virsh("define", f"{IMAGES}/{prefix}.xml")


def _failure(api, job) -> str:
    logs = [api.get(f"/api/jobs/{c['id']}/").json().get("log", "") for c in job.get("children", [])]
    return f"{job['error']}\n{logs[-1][-6000:] if logs else ''}"


@pytest.fixture(scope="module")
def fleet(test_host, qcluster, callback_server, django_db_blocker, debian_guest, debian_cloudinit_guest,
          tmp_path_factory):
    from hostjobs import transport
    from vms.models import Vm

    th = test_host
    guests = {"plain": debian_guest, "cloudinit": debian_cloudinit_guest}
    keys = {name: _key_pair(tmp_path_factory.mktemp("keys"), name) for name in VMS}
    with django_db_blocker.unblock():
        _user, api = superuser_api("booter")
        host = add_host(api, th, "bootfleet", POOL, vm_pool_path=VM_POOL)
        try:
            for variant, g in guests.items():
                _define_source(th, f"src-{variant}", g)
            started = time.monotonic()
            jobs = {}
            for variant in guests:  # both seals at once (two appliances)
                r = api.post("/api/templates/", {"name": f"boot-{variant}", "vm": f"src-{variant}", "seal": True,
                                                 "host": host.pk}, format="json")
                assert r.status_code == 202, r.content
                jobs[variant] = r.json()["id"]
            ended = wait_jobs(api, jobs.values(), timeout=900)
            seal_s = round(time.monotonic() - started, 1)
            templates = {}
            for variant, jid in jobs.items():
                job = ended[jid]
                assert job["status"] == "done", _failure(api, job)
                templates[variant] = api.get(f"/api/templates/{int(job['target'].split(':')[1])}/").json()
            tpaths = [d["volume"]["path"] for t in templates.values() for d in t["disks"]]
            sha_before = th.sha256(tpaths)

            started = time.monotonic()
            vm_jobs = {}
            for name, (variant, clone, hostname) in VMS.items():
                identity = {"ssh_authorized_keys": [keys[name][0]], **({"hostname": hostname} if hostname else {})}
                r = api.post("/api/vms/", {"template": templates[variant]["id"], "name": name, "clone": clone,
                                           "identity": identity, "start": True}, format="json")
                assert r.status_code == 202, r.content
                vm_jobs[name] = r.json()["id"]
            ended = wait_jobs(api, vm_jobs.values(), timeout=600)
            create_s = round(time.monotonic() - started, 1)
            for name, jid in vm_jobs.items():
                assert ended[jid]["status"] == "done", (name, _failure(api, ended[jid]))
            vms = {v["name"]: v for v in api.get(f"/api/vms/?host={host.pk}&page_size=50").json()["results"]}
            assert set(vms) == set(VMS), vms
            rows = {vm.name: vm for vm in Vm.objects.filter(host=host)}
            parents = {name: [d.volume.parent_id for d in vm.disks.select_related("volume")]
                       for name, vm in rows.items()}
            probes, consoles = {}, {}
            for name in VMS:  # they all boot at once: wait for each one's line in turn
                try:
                    probes[name] = boot.wait_probe(th, name, timeout=600)
                finally:
                    consoles[name] = boot.read_console(th, boot.console_log_of(th, name))
            boot_s = round(time.monotonic() - started, 1)
            states = {name: th.virsh("domstate", name, check=False).stdout.strip() for name in VMS}
            # they ran, and they are deleted through the API (running: force); the template's files never written
            del_jobs = {}
            for name, vm in vms.items():
                r = api.delete(f"/api/vms/{vm['id']}/")
                assert r.status_code == 409, (name, r.status_code, r.content)  # running: refused without force
                r = api.delete(f"/api/vms/{vm['id']}/?force=true")
                assert r.status_code == 202, r.content
                del_jobs[name] = r.json()["id"]
            deleted = wait_jobs(api, del_jobs.values(), timeout=300)
            yield {"th": th, "api": api, "host_id": host.pk, "templates": templates, "vms": vms, "rows": rows,
                   "probes": probes, "consoles": consoles, "keys": keys, "guests": guests, "states": states,
                   "parents": parents, "sha_before": sha_before, "sha_after": th.sha256(tpaths),
                   "deleted": {name: deleted[jid] for name, jid in del_jobs.items()},
                   "domains_after": set(th.virsh("list", "--all", "--name").stdout.split()),
                   "timings": {"seal_s": seal_s, "create_and_boot_s": boot_s, "create_s": create_s}}
        finally:
            for name in VMS:
                boot.destroy(th, name)
            for vm in Vm.objects.filter(host=host):
                api.delete(f"/api/vms/{vm.pk}/?force=true")
            for variant in guests:
                th.virsh("undefine", f"src-{variant}", check=False)
                th.exec("sh", "-c", f"rm -f {IMAGES}/src-{variant}*", check=False)
            transport.close(host)


def test_both_templates_are_sealed_and_their_audit_says_sshd_can_start(fleet):
    for t in fleet["templates"].values():
        assert (t["status"], t["sealed"]) == ("ok", True)
        items = {i["item"]: i for i in t["audit"]["items"]}
        assert items["sshd can start at first boot"]["ok"] is True, items
        assert items["ssh host keys"]["ok"] is True, "the seal removed the source's keys"
        assert "Debian GNU/Linux 12" in t["guest_os"]
    print(fleet["timings"])


def test_every_vm_booted_with_sshd_running_and_no_failed_unit(fleet):
    for name, p in fleet["probes"].items():
        assert p["sshd"] == "active", (name, p, fleet["consoles"][name][-3000:])
        assert p["failed"] == [], (name, p["failed"], fleet["consoles"][name][-3000:])
        assert fleet["states"][name] == "running"


def test_every_vm_has_its_own_machine_id(fleet):
    ids = {name: p["machine_id"] for name, p in fleet["probes"].items()}
    for mid in ids.values():
        assert len(mid) == 32, ids
        assert int(mid, 16) != 0, ids
    assert len(set(ids.values())) == len(ids), f"machine-ids shared: {ids}"
    sources = {g["machine_id"] for g in fleet["guests"].values()}
    assert not set(ids.values()) & sources, "a VM kept its source's machine-id"


def test_every_vm_has_its_own_ssh_host_keys(fleet):
    keys = {name: p["host_keys"] for name, p in fleet["probes"].items()}
    seen = {}
    for name, fps in keys.items():
        assert len(fps) >= 3, (name, fps)  # rsa, ecdsa, ed25519: made at first boot
        for fp in fps:
            assert fp not in seen, f"{name} and {seen.get(fp)} share the host key {fp}"
            seen[fp] = name
    sources = {fp for g in fleet["guests"].values() for fp in g["host_keys"]}
    assert not set(seen) & sources, "a VM kept its source's host keys"


def test_every_vm_has_the_hostname_and_root_key_asked_for(fleet):
    for name, (_variant, _clone, hostname) in VMS.items():
        p = fleet["probes"][name]
        assert p["hostname"] == (hostname or name), (name, p)
        assert p["root_keys"] == [fleet["keys"][name][1]], (name, p["root_keys"])


def test_the_cloud_init_vm_took_its_identity_from_the_nocloud_seed(fleet):
    p = fleet["probes"]["ci-thin-1"]
    assert p["cloud_init"] == "done", p
    assert p["hostname"] == "ci-host-1"
    assert fleet["rows"]["ci-thin-1"].identity_appliance is False
    plain = fleet["probes"]["deb-thin-1"]
    assert plain["cloud_init"] is None, "the plain guest has no cloud-init: vmseal's agent applied its seed"


def test_no_vm_launched_an_appliance_for_its_identity(fleet):
    """Both templates were sealed by vmseal (its first-boot agent reads the seed): the per-VM step is
    the seed alone."""
    assert {name: vm.identity_appliance for name, vm in fleet["rows"].items()} == dict.fromkeys(VMS, False)


def test_thin_vms_are_overlays_and_the_full_one_a_copy(fleet):
    for name, (_v, clone, _h) in VMS.items():
        parents = fleet["parents"][name]
        assert parents, name
        assert all((p is not None) == (clone == "thin") for p in parents), (name, parents)


def test_the_templates_volume_files_were_never_written(fleet):
    assert fleet["sha_before"] == fleet["sha_after"]


def test_deleting_the_running_vms_with_force_removed_their_domains(fleet):
    for name, job in fleet["deleted"].items():
        assert job["status"] == "done", (name, job["error"])
    assert not set(VMS) & fleet["domains_after"]
    r = fleet["api"].get(f"/api/vms/?host={fleet['host_id']}")
    assert r.json()["count"] == 0
