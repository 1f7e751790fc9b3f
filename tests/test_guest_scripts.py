"""The scripts a seal runs inside the guest (hooks/guest_prepare.sh, hooks/guest_audit.sh), run here in a
chroot of a guest's files as guestdisk.py plants them."""

import os
import shutil

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


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_the_audit_script_fails_every_planted_item_and_passes_a_clean_guest(guest_tree):
    p = _run_script("guest_audit.sh", guest_tree, chroot=True)
    assert p.returncode == 1, p.stdout + p.stderr
    audit = sysprep.audit_of(p.stdout, passed=False)
    assert [i["item"] for i in audit["items"]] == list(sysprep.AUDIT_ITEMS), "the script and AUDIT_ITEMS agree"
    assert sysprep.guest_of(p.stdout) == "Debian GNU/Linux 12 (bookworm) (debian 12)", "it reports the guest"
    failed = {i["item"] for i in audit["items"] if not i["ok"]}
    assert failed == set(sysprep.AUDIT_ITEMS), audit  # every item was planted
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
    assert p.returncode == 0, p.stdout + p.stderr
    assert sysprep.audit_of(p.stdout, passed=True)["passed"] is True
    (guest_tree / "tmp/vmseal-audit-hostname").write_text("other")
    p = _run_script("guest_audit.sh", guest_tree, chroot=True)
    assert p.returncode == 1
    assert "vmseal-audit FAIL hostname: /etc/hostname is 'web-01', expected 'other'" in p.stdout
