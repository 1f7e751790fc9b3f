"""A real Debian 12 guest (systemd, openssh-server; scripts/debguest.py), sealed by vmseal through the API on
a real test host, then BOOTED: a thin qcow2 overlay of the sealed template's volume, with a NoCloud seed
(cidata ISO) that names the VM, direct kernel boot under TCG. What the booted VM says about itself (its
serial console's VMSEAL-PROBE line, tests/utils/boot.py) shows it is its own machine: sshd running, its
own SSH host keys and machine-id, the seed's host name and root key (applied by vmseal's first-boot
agent: this guest has no cloud-init). One seal, one boot, shared by every test here (~2-3 min)."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from tests.utils import boot
from tests.utils.jobs import wait_jobs
from tests.utils.seed import build_seed

pytestmark = pytest.mark.e2e

IMAGES = "/var/lib/libvirt/images"
VM_NAME = "deb-vm-one"


def _key_pair(tmp) -> tuple[str, str]:
    """A fresh SSH public key line and its fingerprint."""
    path = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops@example", "-f", str(path)], check=True)
    fp = subprocess.run(["ssh-keygen", "-lf", str(path) + ".pub"], check=True, capture_output=True, text=True)
    return (path.with_suffix(".pub")).read_text().strip(), fp.stdout.split()[1]


@pytest.fixture(scope="module")
def booted(test_host, qcluster, django_db_blocker, debian_guest, tmp_path_factory):
    """Define the Debian source VM, make a sealed template of it through the API, boot a thin overlay of
    its volume with a seed; return what the API and the booted VM said. Tears down what it made."""
    import shutil
    import time

    from django.contrib.auth.models import User
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    from hostjobs import transport
    from hostjobs.models import Host

    th, g = test_host, debian_guest
    made = []  # files on the host to remove
    vm_uuid = str(uuid.uuid4())
    with django_db_blocker.unblock():
        try:
            user = User.objects.create_superuser("boot", "boot@example.test", "boot-pass-1")
            api = APIClient()
            api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
            r = api.post("/api/hosts/", {"name": "boot1", "address": th.address, "ssh_user": "root",
                                         "host_key": th.host_key, "guestfs_backend_settings": "force_tcg"},
                         format="json")
            assert r.status_code == 201, r.content
            host_id = r.json()["id"]
            call_command("host_install", "boot1")
            # the source VM: the cached guest's disk, kernel and initrd copied into the host's images
            for f in ("disk.qcow2", "vmlinuz", "initrd.img"):
                shutil.copy(f"{g['dir']}/{f}", th.images / f"debsrc-{f}")
                made.append(f"{IMAGES}/debsrc-{f}")
            kernel, initrd = f"{IMAGES}/debsrc-vmlinuz", f"{IMAGES}/debsrc-initrd.img"
            src_xml = boot.domain_xml("debsrc", str(uuid.uuid4()), f"{IMAGES}/debsrc-disk.qcow2", kernel=kernel,
                                      initrd=initrd, cmdline=g["cmdline"])
            (th.images / "debsrc.xml").write_text(src_xml)
            th.virsh("define", f"{IMAGES}/debsrc.xml")
            started = time.monotonic()
            r = api.post("/api/templates/", {"name": "tpl-debian", "vm": "debsrc", "seal": True, "host": host_id},
                         format="json")
            assert r.status_code == 202, r.content
            job = wait_jobs(api, [r.json()["id"]])[r.json()["id"]]
            seal_s = time.monotonic() - started
            if job["status"] != "done":
                logs = [api.get(f"/api/jobs/{c['id']}/").json().get("log", "") for c in job["children"]]
                raise AssertionError(f"{job['error']}\n{logs[-1][-6000:] if logs else ''}")
            tpl = api.get(f"/api/templates/{int(job['target'].split(':')[1])}/").json()
            volume = tpl["disks"][0]["volume"]["path"]
            before = th.sha256([volume])
            # a thin VM: a qcow2 overlay of the template's volume, the format always given
            overlay = f"{IMAGES}/{VM_NAME}.qcow2"
            th.exec("qemu-img", "create", "-q", "-f", "qcow2", "-b", volume, "-F", "qcow2", overlay)
            made.append(overlay)
            key, key_fp = _key_pair(tmp_path_factory.mktemp("key"))
            seed = th.images / f"{VM_NAME}-seed.iso"
            seed.write_bytes(build_seed(instance_id=vm_uuid, hostname=VM_NAME, ssh_authorized_keys=[key]))
            made.append(f"{IMAGES}/{seed.name}")
            xml = boot.domain_xml(VM_NAME, vm_uuid, overlay, kernel=kernel, initrd=initrd, cmdline=g["cmdline"],
                                  seed=f"{IMAGES}/{seed.name}")
            (th.images / f"{VM_NAME}.xml").write_text(xml)
            made.append(f"{IMAGES}/{VM_NAME}.xml")
            th.virsh("define", f"{IMAGES}/{VM_NAME}.xml")
            try:
                probe = boot.boot(th, VM_NAME, timeout=300)
            finally:
                console = boot.read_console(th, f"{boot.CONSOLE_DIR}/{vm_uuid}.log")
                boot.destroy(th, VM_NAME)
            after = th.sha256([volume])
            yield {"probe": probe, "template": tpl, "before": before, "after": after, "key_fp": key_fp,
                   "console": console, "seal_s": round(seal_s, 1), "job": job}
        finally:
            boot.destroy(th, VM_NAME)
            th.virsh("undefine", "debsrc", check=False)
            th.exec("rm", "-f", *made, f"{IMAGES}/debsrc.xml", f"{boot.CONSOLE_DIR}/{vm_uuid}.log", check=False)
            for h in Host.objects.all():
                transport.close(h)


def test_the_sealed_debian_template_is_ok_and_its_audit_says_sshd_can_start(booted):
    tpl = booted["template"]
    assert tpl["status"] == "ok"
    assert tpl["sealed"] is True
    items = {i["item"]: i for i in tpl["audit"]["items"]}
    assert items["sshd can start at first boot"] == {
        "item": "sshd can start at first boot", "ok": True, "detail": "vmseal-firstboot.service makes its host keys"}
    assert items["ssh host keys"]["ok"] is True, "the seal removed the source's keys"
    assert "Debian GNU/Linux 12" in tpl["guest_os"]


def test_the_vm_from_the_sealed_template_runs_sshd(booted):
    """Before the seal fix, Debian's ssh.service failed here: no host keys, and "sshd -t" refuses that."""
    p = booted["probe"]
    assert p["sshd"] == "active", (p, booted["console"][-3000:])
    assert "ssh.service" not in p["failed"]


def test_the_vm_has_its_own_ssh_host_keys(booted, debian_guest):
    keys = booted["probe"]["host_keys"]
    assert len(keys) >= 3, keys  # rsa, ecdsa, ed25519: made at first boot
    assert not set(keys) & set(debian_guest["host_keys"]), "none is the source VM's"
    assert booted["probe"]["firstboot"] == "active"


def test_the_vm_has_its_own_machine_id(booted, debian_guest):
    mid = booted["probe"]["machine_id"]
    assert len(mid) == 32, mid
    assert int(mid, 16) != 0, mid
    assert mid != debian_guest["machine_id"]


def test_the_vm_took_its_name_and_root_key_from_the_seed(booted):
    p = booted["probe"]
    assert p["hostname"] == VM_NAME
    assert p["etc_hostname"] == VM_NAME
    assert p["root_keys"] == [booted["key_fp"]]
    assert p["cloud_init"] is None, "no cloud-init in this guest: vmseal's agent applied the seed"


def test_the_vm_booted_cleanly_and_the_template_volume_was_not_written(booted):
    assert booted["probe"]["failed"] == [], booted["console"][-3000:]
    assert booted["before"] == booted["after"], "a thin VM writes its overlay, never the template's volume"
    print(f"seal {booted['seal_s']} s, boot to probe {booted['probe']['boot_s']} s")
