#!/usr/bin/env python3
"""Build and cache real Debian 12 guests (systemd, openssh-server, Debian's cloud kernel) for the tests
that boot VMs, by debootstrap from the machine's own Debian mirror (deb.debian.org). Built once per
recipe and cached outside the repository's tree:

    /var/cache/vmseal/guests/<recipe hash>/
        disk.qcow2      the root filesystem: a raw ext4 image, no partition table (root=/dev/vda; fstab by
                        UUID), as qcow2
        vmlinuz         the guest's kernel and initrd, for direct kernel boot
        initrd.img      (virtio_pci, virtio_blk built in; ext4 is built into the kernel)
        host-keys.txt   the SSH host key fingerprints of the source guest, one "SHA256:..." a line
        guest.json      what was built: variant, kernel command line, machine-id, hostname, timings

    scripts/debguest.py build plain|cloudinit   # prints guest.json's path; builds only when not cached
    scripts/debguest.py path plain|cloudinit    # the cache directory, built or not
    scripts/debguest.py prune                   # remove the entries of other recipes (older versions)

Variants: ``plain`` (no cloud-init) and ``cloudinit`` (Debian's cloud-init, datasources NoCloud, None:
it never waits for a network metadata service). The root password is locked ("*"), a getty runs on
ttyS0, and a test-only unit, ``vmseal-probe.service``, prints ONE line to /dev/ttyS0 once the system is
up (multi-user, ssh.service settled, cloud-init done if installed)::

    VMSEAL-PROBE {"machine_id": ..., "hostname": ..., "sshd": "active", "host_keys": ["SHA256:..."],
                  "root_keys": ["SHA256:..."], "cloud_init": "done" | null, "firstboot": ..., "failed": [...]}

The cache key is a hash of this file's content and the variant (the recipe); a build runs in a
temporary directory next to the cache entry and is renamed into place when complete, under an
exclusive flock, so two test sessions never build the same guest twice nor see a half-built one.
This builds OUR image from Debian's packages (the tree is ours, made here): it is not a guest's content.
Stdlib only; run as root.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

CACHE = Path(os.environ.get("VMSEAL_GUEST_CACHE", "/var/cache/vmseal/guests"))
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
PACKAGES = ("systemd-sysv", "udev", "openssh-server", "linux-image-cloud-amd64", "initramfs-tools", "ifupdown",
            "isc-dhcp-client")
VARIANTS = {"plain": (), "cloudinit": ("cloud-init",)}
DISK_SIZE = "2G"  # virtual size; the tree takes ~450 MB (plain)
CMDLINE = "root=/dev/vda rw console=ttyS0,115200 net.ifnames=0 quiet systemd.show_status=0 loglevel=3"
PROBE_PREFIX = "VMSEAL-PROBE "

PROBE_SCRIPT = r"""#!/bin/sh
# vmseal test probe: one line on the serial console, "VMSEAL-PROBE {json}", once the system is up.
# Test-only: part of the guests scripts/debguest.py builds, never of vmseal itself.
esc() { printf '%s' "$1" | tr -d '\000-\037' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'; }
list() { # lines on stdin -> JSON array of strings
  first=1; printf '['
  while IFS= read -r l; do
    [ -n "$l" ] || continue
    [ $first = 1 ] || printf ', '
    first=0; printf '"%s"' "$(esc "$l")"
  done
  printf ']'
}
fps() { for f in "$@"; do [ -f "$f" ] && ssh-keygen -lf "$f" 2>/dev/null | awk '{print $2}'; done; }
ci=null
if [ -x /usr/bin/cloud-init ]; then
  timeout 300 cloud-init status --wait >/dev/null 2>&1
  ci="\"$(esc "$(cloud-init status 2>/dev/null | sed -n 's/^status: //p')")\""
fi
fb=$(systemctl is-active vmseal-firstboot.service 2>/dev/null)
mid=$(cat /etc/machine-id 2>/dev/null)
fmt='{"machine_id": "%s", "hostname": "%s", "etc_hostname": "%s", "sshd": "%s", "host_keys": %s, '
fmt="$fmt"'"root_keys": %s, "cloud_init": %s, "firstboot": "%s", "failed": %s, "uptime": "%s"}'
json=$(printf "$fmt" \
  "$(esc "$mid")" "$(esc "$(hostname)")" "$(esc "$(cat /etc/hostname 2>/dev/null)")" \
  "$(esc "$(systemctl is-active ssh.service)")" "$(fps /etc/ssh/ssh_host_*_key.pub | sort | list)" \
  "$(fps /root/.ssh/authorized_keys | sort | list)" "$ci" "$(esc "$fb")" \
  "$(systemctl list-units --failed --plain --no-legend 2>/dev/null | awk '{print $1}' | list)" \
  "$(cut -d' ' -f1 /proc/uptime)")
printf '\n%s%s\n' "VMSEAL-PROBE " "$json" > /dev/ttyS0
"""

PROBE_UNIT = """[Unit]
Description=vmseal test probe (one VMSEAL-PROBE line on ttyS0)
After=multi-user.target ssh.service cloud-final.service vmseal-firstboot.service

[Service]
Type=oneshot
ExecStart=/usr/local/lib/vmseal-probe
StandardOutput=journal

[Install]
WantedBy=multi-user.target
"""

# Local seeds only, never wait for a network metadata service. The locale module is off: Debian's
# locale-gen ignores the locale cloud-init asks for (en_US.UTF-8), update-locale then refuses it and
# cloud-config.service fails (cloud-init status: error).
CLOUD_CFG = """# vmseal test guest (scripts/debguest.py)
datasource_list: [ NoCloud, None ]
locale: false
"""


def recipe_hash(variant: str) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(b"\0variant=" + variant.encode())
    return h.hexdigest()[:16]


def path(variant: str) -> Path:
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r}: {', '.join(VARIANTS)}")
    return CACHE / f"{variant}-{recipe_hash(variant)}"


def _run(*argv: str, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])}... failed ({p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")
    return p


def _write(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    p.chmod(mode)


def _enable(root: Path, unit: str, target: str) -> None:
    wants = root / "etc/systemd/system" / f"{target}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / unit
    own = root / "etc/systemd/system" / unit
    src = f"/etc/systemd/system/{unit}" if own.exists() else f"/lib/systemd/system/{unit}"
    link.unlink(missing_ok=True)
    link.symlink_to(src)


def _configure(root: Path, variant: str) -> dict:
    hostname = f"vmseal-src-{variant}"
    machine_id = uuid.uuid4().hex
    _write(root, "/etc/hostname", hostname + "\n")
    _write(root, "/etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n::1 localhost ip6-localhost\n")
    _write(root, "/etc/machine-id", machine_id + "\n", 0o444)  # the source VM's own, as if it had booted
    fs_uuid = str(uuid.uuid4())
    # by UUID, as an installed Debian has it (libguestfs maps a "/dev/vda" fstab entry by disk order,
    # which breaks when a seal adds its report disk)
    _write(root, "/etc/fstab", f"UUID={fs_uuid} / ext4 defaults,errors=remount-ro 0 1\n")
    _write(root, "/etc/network/interfaces",
           "source /etc/network/interfaces.d/*\nauto lo\niface lo inet loopback\n"
           "allow-hotplug eth0\niface eth0 inet dhcp\n")
    # the serial console: a getty on ttyS0 (the kernel's console= makes one too; this one is explicit)
    (root / "etc/systemd/system/getty.target.wants").mkdir(parents=True, exist_ok=True)
    link = root / "etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"
    link.unlink(missing_ok=True)
    link.symlink_to("/lib/systemd/system/serial-getty@.service")
    _write(root, "/usr/local/lib/vmseal-probe", PROBE_SCRIPT, 0o755)
    _write(root, "/etc/systemd/system/vmseal-probe.service", PROBE_UNIT)
    _enable(root, "vmseal-probe.service", "multi-user.target")
    # the initrd: virtio drivers for the root disk (ext4 is built into Debian's cloud kernel); CD-ROM
    # support (isofs, sr_mod, ata_piix) stays as modules in the root filesystem
    _write(root, "/etc/initramfs-tools/modules", "virtio_pci\nvirtio_blk\nvirtio_net\n")
    if variant == "cloudinit":
        _write(root, "/etc/cloud/cloud.cfg.d/90_vmseal_datasources.cfg", CLOUD_CFG)
    kernels = sorted(p.name for p in (root / "lib/modules").iterdir())
    if len(kernels) != 1:
        raise SystemExit(f"expected one kernel in the guest, found {kernels}")
    kver = kernels[0]
    for mod in ("kernel/fs/isofs/isofs.ko", "kernel/drivers/scsi/sr_mod.ko", "kernel/drivers/ata/ata_piix.ko",
                "kernel/drivers/block/virtio_blk.ko"):
        if not any((root / "lib/modules" / kver).glob(mod + "*")):
            raise SystemExit(f"the guest's kernel {kver} has no module {mod}")
    _run("chroot", str(root), "update-initramfs", "-u", "-k", kver)
    listing = _run("sh", "-c", f"lsinitramfs {root}/boot/initrd.img-{kver}").stdout
    for mod in ("virtio_blk.ko", "virtio_pci.ko"):
        if mod not in listing:
            raise SystemExit(f"the initrd has no {mod}")
    _run("chroot", str(root), "apt-get", "clean")
    return {"hostname": hostname, "machine_id": machine_id, "kernel": kver, "fs_uuid": fs_uuid}


def _host_keys(root: Path) -> list[str]:
    fps = []
    for pub in sorted((root / "etc/ssh").glob("ssh_host_*_key.pub")):
        fps.append(_run("ssh-keygen", "-lf", str(pub)).stdout.split()[1])
    if not fps:
        raise SystemExit("openssh-server made no host keys in the guest")
    return sorted(fps)


def _apt_install(root: Path, packages: tuple[str, ...]) -> None:
    """``apt-get install`` in the tree, from the mirror debootstrap wrote in its sources.list; no
    service is started (policy-rc.d), /proc is mounted for the install only."""
    _write(root, "/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)
    _run("mount", "-t", "proc", "proc", str(root / "proc"))
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run("chroot", str(root), "apt-get", "update", "-q", env=env)
        _run("chroot", str(root), "apt-get", "install", "-y", "-q", "--no-install-recommends", *packages, env=env)
        _run("chroot", str(root), "sh", "-c", "rm -rf /var/lib/apt/lists/*")
    finally:
        subprocess.run(["umount", str(root / "proc")], capture_output=True)
        (root / "usr/sbin/policy-rc.d").unlink(missing_ok=True)


def _build(variant: str, out: Path) -> dict:
    timings = {}
    root = out / "root"
    t0 = time.monotonic()
    _run("debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), SUITE, str(root), MIRROR)
    timings["debootstrap_s"] = round(time.monotonic() - t0, 1)
    if VARIANTS[variant]:  # by apt in the tree (debootstrap's own resolver fails on cloud-init's python3 set)
        t0 = time.monotonic()
        _apt_install(root, VARIANTS[variant])
        timings["apt_s"] = round(time.monotonic() - t0, 1)
    info = _configure(root, variant)
    keys = _host_keys(root)
    (out / "host-keys.txt").write_text("".join(k + "\n" for k in keys))
    kver = info["kernel"]
    shutil.copy(root / "boot" / f"vmlinuz-{kver}", out / "vmlinuz")
    shutil.copy(root / "boot" / f"initrd.img-{kver}", out / "initrd.img")
    t1 = time.monotonic()
    raw = out / "disk.raw"
    _run("mke2fs", "-q", "-F", "-t", "ext4", "-L", "vmsealroot", "-U", info["fs_uuid"], "-d", str(root), str(raw),
         DISK_SIZE)
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out / "disk.qcow2"))
    raw.unlink()
    shutil.rmtree(root)
    timings["image_s"] = round(time.monotonic() - t1, 1)
    return {"variant": variant, "recipe": recipe_hash(variant), "cmdline": CMDLINE, "host_keys": keys,
            **info, **timings}


def build(variant: str) -> dict:
    """The guest of ``variant``, built if not cached; returns guest.json's content with the file paths."""
    final = path(variant)
    CACHE.mkdir(parents=True, exist_ok=True)
    os.chmod(CACHE, 0o700)
    with open(CACHE / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (final / "guest.json").exists():
            tmp = CACHE / f".{final.name}.tmp{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            for stale in CACHE.glob(f".{final.name}.tmp*"):  # a build killed midway (we hold the lock)
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
            try:
                t0 = time.monotonic()
                info = _build(variant, tmp)
                info["build_s"] = round(time.monotonic() - t0, 1)
                (tmp / "guest.json").write_text(json.dumps(info, indent=1))
                os.rename(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    info = json.loads((final / "guest.json").read_text())
    return {**info, "dir": str(final), "disk": str(final / "disk.qcow2"), "kernel_path": str(final / "vmlinuz"),
            "initrd": str(final / "initrd.img"), "host_keys_file": str(final / "host-keys.txt")}


def prune() -> list[str]:
    """Remove cache entries (and their locks) that are not the current recipe of a variant; each under
    its lock, so a build in progress is never removed. Returns the names removed."""
    keep = {path(v).name for v in VARIANTS}
    removed = []
    for entry in sorted(CACHE.glob("*-*")) if CACHE.exists() else []:
        if entry.name in keep or not entry.is_dir():
            continue
        with open(CACHE / f".{entry.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            shutil.rmtree(entry, ignore_errors=True)
        (CACHE / f".{entry.name}.lock").unlink(missing_ok=True)
        removed.append(entry.name)
    return removed


def main(argv: list[str]) -> int:
    if argv == ["prune"]:
        print("\n".join(prune()))
        return 0
    if len(argv) != 2 or argv[0] not in ("build", "path"):
        print(__doc__)
        return 2
    if argv[0] == "path":
        print(path(argv[1]))
    else:
        print(json.dumps(build(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
