"""The scripts a seal runs inside the guest (hooks/guest_prepare.sh, hooks/guest_audit.sh), run here in a
chroot of a guest's files as guestdisk.py plants them."""

import os
import shutil
from pathlib import Path

import pytest

from sealing import sysprep


def _run_script(script, guest, *argv, chroot=False):
    import subprocess
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "hooks" / script
    if chroot:
        (guest / "tmp").mkdir(exist_ok=True)
        shutil.copy(path, guest / "tmp" / script)
        return subprocess.run(["chroot", str(guest), "/bin/sh", f"/tmp/{script}"], capture_output=True, text=True)
    return subprocess.run(["sh", str(path), *argv], cwd=guest, capture_output=True, text=True)


@pytest.fixture
def guest_tree(tmp_path):
    """A guest's files as guestdisk.py plants them (every identity item present), as a directory."""
    from tests.fixtures.testhosts import guestdisk

    root = tmp_path / "guest"
    guestdisk._write_root(root, {**guestdisk.BASE_FILES, **guestdisk.IDENTITY, "/etc/fstab": ""})
    return root


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_the_guard_script_accepts_linux_and_scrubs_mac_pinning(guest_tree):
    p = _run_script("guest_prepare.sh", guest_tree, chroot=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "hwaddress" not in (guest_tree / "etc/network/interfaces").read_text()
    nm = (guest_tree / "etc/NetworkManager/system-connections/eth0.nmconnection").read_text()
    assert "mac-address" not in nm
    assert "[connection]" in nm


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_the_guard_script_refuses_windows_and_unknown_systems(tmp_path):
    from tests.fixtures.testhosts import guestdisk

    for name, dirs in (("win", ["Windows/System32"]), ("other", ["etc"])):
        root = tmp_path / name
        for d in dirs:
            (root / d).mkdir(parents=True)
        (root / "bin").mkdir()
        shutil.copy(guestdisk.BUSYBOX, root / "bin" / "sh")  # chroot runs the guest's own /bin/sh
        p = _run_script("guest_prepare.sh", root, chroot=True)
        assert p.returncode == 1, name
        why = sysprep.refusal_of(p.stdout)
        assert why.startswith("the guest is Windows" if name == "win" else "no Linux system found"), (name, why)


def _install_firstboot(guest):
    """What the seal does: upload the agent to the guest's /tmp, run its installer in the guest."""
    agent = Path(__file__).resolve().parent.parent / "hooks" / "vmseal_firstboot.sh"
    shutil.copy(agent, guest / "tmp/vmseal-firstboot")
    return _run_script("guest_firstboot.sh", guest, chroot=True)


def _without_host_keys(root, init=True):
    """A guest's files as guestdisk.py plants them, but for the SSH host keys (what a seal leaves)."""
    from tests.fixtures.testhosts import guestdisk

    guestdisk._write_root(root, {**guestdisk.BASE_FILES, **guestdisk.IDENTITY, "/etc/fstab": ""}, init=init)
    for k in (root / "etc/ssh").glob("ssh_host_*"):
        k.unlink()
    return root


def _plant_sshd(guest):
    """An sshd binary (a stand-in: the audit only looks for the file)."""
    (guest / "usr/sbin/sshd").write_text("#!/bin/sh\n")
    (guest / "usr/sbin/sshd").chmod(0o755)


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_the_first_boot_agent_is_installed_and_enabled_on_systemd_guests_only(guest_tree, tmp_path):
    p = _install_firstboot(guest_tree)
    assert p.returncode == 0, p.stdout + p.stderr
    agent = guest_tree / "usr/local/lib/vmseal/firstboot"
    assert agent.read_bytes() == (Path(__file__).resolve().parent.parent / "hooks/vmseal_firstboot.sh").read_bytes()
    assert agent.stat().st_mode & 0o777 == 0o755
    unit = (guest_tree / "etc/systemd/system/vmseal-firstboot.service").read_text()
    assert "ExecStart=/usr/local/lib/vmseal/firstboot" in unit
    before = next(ln for ln in unit.splitlines() if ln.startswith("Before="))
    assert {"ssh.service", "ssh.socket", "sshd.service", "network-pre.target"} <= set(before[7:].split())
    link = guest_tree / "etc/systemd/system/multi-user.target.wants/vmseal-firstboot.service"
    assert os.readlink(link) == "/etc/systemd/system/vmseal-firstboot.service", "enabled, by a link inside the guest"
    assert not (guest_tree / "tmp/vmseal-firstboot").exists(), "the upload is removed"
    # a guest without systemd: nothing installed, and the seal goes on
    noinit = _without_host_keys(tmp_path / "noinit", init=False)
    p = _install_firstboot(noinit)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "not a systemd guest" in p.stdout
    assert not (noinit / "usr/local/lib/vmseal").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_the_audit_says_whether_sshd_can_start_at_first_boot(tmp_path):
    item = "sshd can start at first boot"

    def audit(guest):
        (guest / "tmp/vmseal-audit-hostname").write_text("golden-vm")
        return {i["item"]: i for i in sysprep.audit_of(_run_script("guest_audit.sh", guest, chroot=True).stdout,
                                                         passed=False)["items"]}[item]

    guest = _without_host_keys(tmp_path / "g")
    assert audit(guest) == {"item": item, "ok": True, "detail": "no sshd"}
    _plant_sshd(guest)  # sshd, its host keys removed, nothing to make them: Debian's ssh.service fails
    assert audit(guest) == {"item": item, "ok": False,
                            "detail": "/usr/sbin/sshd has no host keys and nothing makes them at first boot"}
    (guest / "etc/ssh").mkdir(exist_ok=True)
    (guest / "etc/ssh/ssh_host_ed25519_key").write_text("k")
    assert audit(guest)["ok"] is True, "keys kept (the ssh host keys item fails then)"
    (guest / "etc/ssh/ssh_host_ed25519_key").unlink()
    (guest / "usr/lib/systemd/system/sshd-keygen@.service").write_text("[Unit]\n")
    assert audit(guest) == {"item": item, "ok": True,
                            "detail": "the distribution's sshd-keygen unit makes its host keys"}
    (guest / "usr/lib/systemd/system/sshd-keygen@.service").unlink()
    (guest / "usr/bin/cloud-init").write_text("#!/bin/sh\n")
    assert audit(guest) == {"item": item, "ok": True, "detail": "cloud-init makes its host keys"}
    (guest / "usr/bin/cloud-init").unlink()
    assert _install_firstboot(guest).returncode == 0
    assert audit(guest) == {"item": item, "ok": True, "detail": "vmseal-firstboot.service makes its host keys"}
    (guest / "etc/systemd/system/multi-user.target.wants/vmseal-firstboot.service").unlink()
    assert audit(guest)["ok"] is False, "installed but not enabled makes no keys"


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_the_audit_script_fails_every_planted_item_and_passes_a_clean_guest(guest_tree):
    _plant_sshd(guest_tree)
    p = _run_script("guest_audit.sh", guest_tree, chroot=True)
    assert p.returncode == 1, p.stdout + p.stderr
    audit = sysprep.audit_of(p.stdout, passed=False)
    assert [i["item"] for i in audit["items"]] == list(sysprep.AUDIT_ITEMS), "the script and AUDIT_ITEMS agree"
    assert sysprep.guest_of(p.stdout) == "Debian GNU/Linux 12 (bookworm) (debian 12)", "it reports the guest"
    failed = {i["item"] for i in audit["items"] if not i["ok"]}
    # every item was planted; sshd can start (its host keys are still there) until the seal removes them
    assert failed == set(sysprep.AUDIT_ITEMS) - {"sshd can start at first boot"}, audit
    # what a seal leaves: identity removed, machine-id emptied, the host name set
    for rel in ("etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub", "etc/ssh/ssh_host_rsa_key",
                "etc/ssh/ssh_host_rsa_key.pub", "etc/udev/rules.d/70-persistent-net.rules", "root/.bash_history",
                "home/alice/.bash_history", "var/lib/dhcp/dhclient.eth0.leases", "var/lib/systemd/random-seed",
                "etc/lvm/devices/system.devices", "etc/NetworkManager/system-connections/eth0.nmconnection",
                "etc/network/interfaces"):
        (guest_tree / rel).unlink()
    for rel in ("etc/machine-id", "var/lib/dbus/machine-id", "var/log/syslog", "var/log/auth.log",
                "var/log/messages", "var/log/wtmp", "var/log/lastlog"):
        (guest_tree / rel).write_text("")
    (guest_tree / "etc/hostname").write_text("web-01\n")
    (guest_tree / "tmp/vmseal-audit-hostname").write_text("web-01")
    p = _run_script("guest_audit.sh", guest_tree, chroot=True)
    assert p.returncode == 1, "keys removed, and nothing makes them at first boot"
    assert [i["item"] for i in sysprep.audit_of(p.stdout, passed=False)["items"] if not i["ok"]] == \
        ["sshd can start at first boot"]
    assert _install_firstboot(guest_tree).returncode == 0
    p = _run_script("guest_audit.sh", guest_tree, chroot=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert sysprep.audit_of(p.stdout, passed=True)["passed"] is True
    (guest_tree / "tmp/vmseal-audit-hostname").write_text("other")
    p = _run_script("guest_audit.sh", guest_tree, chroot=True)
    assert p.returncode == 1
    assert "vmseal-audit FAIL hostname: /etc/hostname is 'web-01', expected 'other'" in p.stdout
