#!/usr/bin/env python3
"""Build tiny Debian-like guest disks in seconds, with no download: ``mke2fs -d`` from a directory,
then ``qemu-img convert`` to qcow2. libguestfs inspection recognises the result as Debian 12.

Shapes:
  one    one disk: / (with /var inside)
  two    two disks: / and /var (fstab mounts /var by UUID)
  blank  one empty ext4 disk: no operating system
  windows one NTFS disk with a Windows directory layout
  noinit one disk like "one" but without an init system (no /etc/systemd, /etc/init.d)
  hostile one disk like "one" whose /etc/os-release, a NetworkManager keyfile and /etc/network/interfaces.d
         are absolute symlinks to HOSTILE_TARGET on the hypervisor host (its real os-release stays in
         /usr/lib): what a guest's owner plants to make a host-side script read or write the host's files

    scripts/guestdisk.py OUTDIR SHAPE [PREFIX]   # prints the qcow2 paths, one per line

Every identity item a seal must remove is planted with a recognisable value (see IDENTITY).
Stdlib only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

BUSYBOX = "/bin/busybox"  # Debian package busybox-static (scripts/install-system-packages.sh)
APPLETS = ("cat", "chmod", "find", "grep", "head", "ln", "ls", "mkdir", "rm", "sed", "tr", "true")
MACHINE_ID = "0123456789abcdef0123456789abcdef"
HOSTNAME = "golden-vm"
MAC = "52:54:00:12:34:56"

# path -> content. Paths under /var land on the second disk in the "two" shape.
IDENTITY = {
    "/etc/machine-id": MACHINE_ID + "\n",
    "/var/lib/dbus/machine-id": MACHINE_ID + "\n",
    "/etc/hostname": HOSTNAME + "\n",
    "/etc/ssh/ssh_host_ed25519_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nFAKEKEYgolden\n-----END-----\n",
    "/etc/ssh/ssh_host_ed25519_key.pub": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGolden root@golden-vm\n",
    "/etc/ssh/ssh_host_rsa_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nFAKERSAgolden\n-----END-----\n",
    "/etc/ssh/ssh_host_rsa_key.pub": "ssh-rsa AAAAB3NzaC1yc2EGoldenGolden root@golden-vm\n",
    "/etc/udev/rules.d/70-persistent-net.rules": (
        f'SUBSYSTEM=="net", ACTION=="add", ATTR{{address}}=="{MAC}", NAME="eth0"\n'
    ),
    "/etc/NetworkManager/system-connections/eth0.nmconnection": (
        f"[connection]\nid=eth0\ntype=ethernet\n[ethernet]\nmac-address={MAC}\n"
    ),
    "/etc/lvm/devices/system.devices": "VERSION=1.1.1\nIDTYPE=sys_wwid IDNAME=golden DEVNAME=/dev/sda2 PVID=golden\n",
    "/root/.bash_history": "ssh admin@db.example\ncat /etc/shadow\n",
    "/home/alice/.bash_history": "sudo -i\n",
    "/var/log/syslog": "Nov 25 golden-vm kernel: booted\n" * 20,
    "/var/log/auth.log": "Nov 25 golden-vm sshd[1]: Accepted publickey for root\n" * 20,
    "/var/log/messages": "golden-vm messages\n" * 20,
    "/var/log/wtmp": "wtmp-golden",
    "/var/log/lastlog": "lastlog-golden",
    "/var/lib/dhcp/dhclient.eth0.leases": f'lease {{ interface "eth0"; fixed-address 192.0.2.50; }} # {MAC}\n',
    "/var/lib/systemd/random-seed": "golden-random-seed",
}

# Where the hostile guest's symlinks point: a directory the tests plant on the test host (private to the
# host's mount namespace), with a file per link holding a marker.
HOSTILE_TARGET = "/var/lib/vmseal/hostile-marker"
HOSTILE_LINKS = {
    "/etc/os-release": f"{HOSTILE_TARGET}/os-release",
    "/etc/NetworkManager/system-connections/host.nmconnection": f"{HOSTILE_TARGET}/host.nmconnection",
    "/etc/network/interfaces.d": f"{HOSTILE_TARGET}/interfaces.d",
}

BASE_FILES = {
    "/etc/os-release": (
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n'
        'VERSION="12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n'
    ),
    "/etc/debian_version": "12.8\n",
    "/etc/hosts": f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n",
    "/etc/passwd": "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\n",
    "/etc/group": "root:x:0:\nalice:x:1000:\n",
    "/etc/shadow": "root:*:19000:0:99999:7:::\nalice:*:19000:0:99999:7:::\n",
    "/etc/timezone": "Europe/Paris\n",
    "/etc/network/interfaces": f"auto eth0\niface eth0 inet dhcp\n  hwaddress ether {MAC}\n",
    "/root/notes.txt": "kept: not identity\n",
}


def _write_files(root: Path, files: dict[str, str]) -> None:
    for path, content in files.items():
        p = root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)


def _write_root(root: Path, files: dict[str, str], init: bool = True) -> None:
    _write_files(root, files)
    if init:  # systemd's layout: virt-customize installs first-boot services there
        for d in ("etc/systemd/system/multi-user.target.wants", "usr/lib/systemd/system"):
            (root / d).mkdir(parents=True, exist_ok=True)
    for tz in ("UTC", "Europe/Berlin", "Europe/Paris"):
        src = Path("/usr/share/zoneinfo") / tz
        if src.exists():
            (root / "usr/share/zoneinfo" / tz).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, root / "usr/share/zoneinfo" / tz)
    (root / "etc/localtime").symlink_to("/usr/share/zoneinfo/Europe/Paris")
    for d in ("usr/bin", "usr/sbin", "usr/lib", "tmp", "var/tmp", "proc", "sys", "dev", "run"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")):
        if not (root / link).exists():
            os.symlink(target, root / link)
    # A real shell (Debian's static busybox as /bin/sh, plus the applets vmseal's audit uses): the
    # audit runs in the guest, and inspection reads the guest's architecture from it.
    shutil.copy(BUSYBOX, root / "usr/bin/sh")
    for applet in APPLETS:
        os.symlink("sh", root / "usr/bin" / applet)
    (root / "etc/ssh/ssh_host_ed25519_key").chmod(0o600)


def _mkfs(src: Path | None, raw: Path, size_mb: int, fs_uuid: str, label: str) -> None:
    argv = ["mke2fs", "-q", "-F", "-t", "ext4", "-U", fs_uuid, "-L", label]
    if src is not None:
        argv += ["-d", str(src)]
    subprocess.run([*argv, str(raw), f"{size_mb}M"], check=True, capture_output=True)


def _to_qcow2(raw: Path, out: Path) -> None:
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)],
                   check=True, capture_output=True)


def build(outdir: str | os.PathLike, shape: str = "two", prefix: str = "guest", filler_mb: int = 0) -> list[Path]:
    """Build the disks of one guest. ``filler_mb`` adds a file of random data to / (to make copies
    take measurable time)."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vmseal-guest-") as tmp:
        t = Path(tmp)
        if shape == "blank":
            _mkfs(None, t / "blank.raw", 32, str(uuid.uuid4()), "blank")
            _to_qcow2(t / "blank.raw", out / f"{prefix}-blank.qcow2")
            return [out / f"{prefix}-blank.qcow2"]
        if shape == "windows":
            return [_windows(t, out / f"{prefix}-c.qcow2")]
        if shape not in ("one", "two", "noinit", "hostile"):
            raise ValueError(f"unknown shape {shape!r}")
        root_uuid, var_uuid = str(uuid.uuid4()), str(uuid.uuid4())
        fstab = f"UUID={root_uuid} / ext4 defaults 0 1\n"
        if shape == "two":
            fstab += f"UUID={var_uuid} /var ext4 defaults 0 2\n"
        files = {**BASE_FILES, **IDENTITY, "/etc/fstab": fstab}
        root_mb = 64 + 2 * filler_mb
        rootdir, vardir = t / "root", t / "var"
        if shape == "two":
            _write_root(rootdir, {k: v for k, v in files.items() if not k.startswith("/var/")})
            _write_files(vardir, {k[len("/var"):]: v for k, v in files.items() if k.startswith("/var/")})
            (vardir / "tmp").mkdir(exist_ok=True)
        else:
            _write_root(rootdir, files, init=shape != "noinit")
        if shape == "hostile":
            (rootdir / "usr/lib/os-release").write_text(BASE_FILES["/etc/os-release"])
            for link, target in HOSTILE_LINKS.items():
                (rootdir / link.lstrip("/")).unlink(missing_ok=True)
                (rootdir / link.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
                os.symlink(target, rootdir / link.lstrip("/"))
        if filler_mb:
            (rootdir / "srv").mkdir(exist_ok=True)
            with open(rootdir / "srv" / "filler.bin", "wb") as f:
                for _ in range(filler_mb):
                    f.write(os.urandom(1 << 20))
        _mkfs(rootdir, t / "root.raw", root_mb, root_uuid, "root")
        disks = [out / f"{prefix}-root.qcow2"]
        _to_qcow2(t / "root.raw", disks[0])
        if shape == "two":
            _mkfs(vardir, t / "var.raw", 32, var_uuid, "var")
            disks.append(out / f"{prefix}-var.qcow2")
            _to_qcow2(t / "var.raw", disks[1])
        return disks


def _windows(t: Path, out: Path) -> Path:
    """An NTFS filesystem with Windows' directory layout (made with mkntfs, filled through ntfs-3g)."""
    raw, mnt = t / "c.raw", t / "mnt"
    with open(raw, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkntfs", "-F", "-Q", "-q", "-L", "Windows", str(raw)], check=True, capture_output=True)
    mnt.mkdir()
    subprocess.run(["ntfs-3g", str(raw), str(mnt)], check=True, capture_output=True)
    try:
        for d in ("Windows/System32/config", "Windows/System32/drivers", "Program Files", "Users/Administrator"):
            (mnt / d).mkdir(parents=True, exist_ok=True)
        for f in ("Windows/System32/config/SOFTWARE", "Windows/System32/config/SYSTEM", "Windows/explorer.exe",
                  "Windows/System32/ntoskrnl.exe"):
            (mnt / f).write_bytes(b"MZ" + b"\0" * 510)
    finally:
        subprocess.run(["umount", str(mnt)], check=True, capture_output=True)
    _to_qcow2(raw, out)
    return out


def domain_xml(name: str, disks: list[str], memory_mib: int = 64) -> str:
    """A minimal TCG domain for the given qcow2 disks (vda, vdb…). It boots nothing useful:
    SeaBIOS finds no boot sector and waits, which is all a 'running VM' test needs."""
    from xml.sax.saxutils import escape, quoteattr

    devs = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file={quoteattr(d)}/><target dev='vd{chr(97 + i)}' bus='virtio'/></disk>"
        for i, d in enumerate(disks)
    )
    return (
        f"<domain type='qemu'><name>{escape(name)}</name><memory unit='MiB'>{memory_mib}</memory>"
        "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
        f"<devices>{devs}</devices></domain>"
    )


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__)
        sys.exit(2)
    for p in build(sys.argv[1], sys.argv[2], *(sys.argv[3:4] or [])):
        print(p)
