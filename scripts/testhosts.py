#!/usr/bin/env python3
"""Create and destroy vmseal *test hypervisor hosts* on this machine.

A test host is a network namespace on our own bridge (``vmsbr0``, 10.211.0.0/24), with its own sshd
(own host key, ``UsePAM no``, own authorized_keys) and, in a private mount namespace that bind-mounts
the libvirt directories and /var/lib/vmseal, its own ``virtlogd`` and ``libvirtd``. Everything a
host owns lives under ``/var/tmp/vmseal-hosts/<name>/``.

    scripts/testhosts.py up NAME [NAME...]     # idempotent; prints one JSON line per host
    scripts/testhosts.py down NAME [NAME...]   # idempotent
    scripts/testhosts.py down --all
    scripts/testhosts.py info NAME             # JSON: address, host key, paths
    scripts/testhosts.py exec NAME -- CMD...   # run CMD inside the host's namespaces

Stdlib only, run as root. Uses ``nsenter --net=/run/netns/NAME`` (never ``ip netns exec``, which
remounts /sys).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

BASE = Path(os.environ.get("VMSEAL_TESTHOSTS_DIR", "/var/tmp/vmseal-hosts"))
BRIDGE = "vmsbr0"
SUBNET = "10.211.0"
BRIDGE_ADDR = f"{SUBNET}.1"
BRIDGE_MAC = "02:76:6d:73:00:01"  # pinned: a bridge takes its lowest port's MAC, which changes as hosts come and go
PREFIX = "vmseal-"  # every test host's netns name starts with this
BIND_DIRS = {  # host path -> name of the private copy under the host's root
    "/etc/libvirt": "etc-libvirt",
    "/run/libvirt": "run-libvirt",
    "/var/lib/libvirt": "lib-libvirt",
    "/var/log/libvirt": "log-libvirt",
    "/var/cache/libvirt": "cache-libvirt",
    "/var/lib/vmseal": "lib-vmseal",
}


def sh(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, text=True, capture_output=True, **kw)


@contextlib.contextmanager
def _slots():
    """The slot table, locked (two test sessions on one machine may make hosts at the same time)."""
    BASE.mkdir(parents=True, exist_ok=True)
    slots = BASE / "slots.json"
    with open(BASE / "slots.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(slots.read_text()) if slots.exists() else {}
        before = dict(data)
        yield data
        if data != before:
            tmp = slots.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(slots)


def _index(name: str) -> int:
    """A stable slot 10..249 for the host's address, MAC and interface names."""
    with _slots() as data:
        if name not in data:
            used = set(data.values())
            data[name] = next(i for i in range(10, 250) if i not in used)
        return data[name]


def _release_index(name: str) -> None:
    with _slots() as data:
        data.pop(name, None)


class TestHost:
    def __init__(self, name: str):
        if not name.startswith(PREFIX) or not name[len(PREFIX):].isalnum():
            raise SystemExit(f"test host names look like {PREFIX}<alnum>, not {name!r}")
        self.name = name
        self.root = BASE / name
        self.nsdir = self.root / "ns"
        self.mntns = self.nsdir / "mnt"
        self.netns = Path("/run/netns") / name

    # -- facts ------------------------------------------------------------------------------
    @property
    def idx(self) -> int:
        return _index(self.name)

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.idx}"

    @property
    def veth_out(self) -> str:
        return f"vmsh{self.idx}"

    @property
    def veth_in(self) -> str:
        return f"vmsn{self.idx}"

    @property
    def mac(self) -> str:
        """The host's MAC, fixed by its slot: a slot used again (a host torn down, another made) keeps
        its address *and* its MAC, so the machine's neighbour entry for the address stays right. With a
        random MAC a stale entry black-holed the first connections to the new host for 6-8 s (until
        the entry was probed out), longer than the app's SSH ConnectTimeout."""
        return f"02:76:6d:73:00:{self.idx:02x}"

    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    def host_key(self) -> str:
        return (self.ssh_dir / "ssh_host_ed25519_key.pub").read_text().strip()

    def info(self) -> dict:
        return {
            "name": self.name,
            "address": self.address,
            "port": 22,
            "ssh_user": "root",
            "host_key": self.host_key(),
            "authorized_keys": str(self.ssh_dir / "authorized_keys"),
            "root": str(self.root),
            "netns": str(self.netns),
            "mntns": str(self.mntns),
            "bridge_address": BRIDGE_ADDR,
            "veth": self.veth_out,
        }

    def nsenter(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net={self.netns}", f"--mount={self.mntns}", "--", *argv]

    def run(self, *argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return sh(*self.nsenter(*argv), check=check, **kw)

    # -- up ---------------------------------------------------------------------------------
    def up(self) -> dict:
        self.root.mkdir(parents=True, exist_ok=True)
        _bridge_up()
        self._net_up()
        self._mnt_up()
        self._sshd_up()
        self._libvirt_up()
        return self.info()

    def _net_up(self) -> None:
        if not self.netns.exists():
            sh("ip", "netns", "add", self.name)
        if sh("ip", "link", "show", self.veth_out, check=False).returncode != 0:
            sh("ip", "link", "add", self.veth_out, "type", "veth", "peer", "name", self.veth_in, "address", self.mac)
            sh("ip", "link", "set", self.veth_in, "netns", self.name)
            sh("ip", "link", "set", self.veth_out, "master", BRIDGE, "up")
        n = ["nsenter", f"--net={self.netns}", "--", "ip"]
        sh(*n, "link", "set", "lo", "up")
        sh(*n, "link", "set", self.veth_in, "up")
        sh(*n, "addr", "replace", f"{self.address}/24", "dev", self.veth_in)
        _forget_neighbour(self.address)

    def _mnt_up(self) -> None:
        for src, copy in BIND_DIRS.items():
            dst = self.root / copy
            if dst.exists():
                continue
            if src == "/etc/libvirt":
                shutil.copytree(src, dst, symlinks=True)
                # No default network autostart; no security driver inside a test namespace.
                shutil.rmtree(dst / "qemu" / "networks" / "autostart", ignore_errors=True)
                with open(dst / "qemu.conf", "a") as f:
                    f.write('\nsecurity_driver = "none"\n')
            elif src in ("/var/lib/libvirt", "/var/cache/libvirt") and Path(src).exists():
                shutil.copytree(src, dst, symlinks=True)
            else:
                dst.mkdir(parents=True)
        if self.mntns.exists() and _is_nsfs(self.mntns):
            return
        self.nsdir.mkdir(parents=True, exist_ok=True)
        if not _is_mountpoint(self.nsdir):
            sh("mount", "--bind", str(self.nsdir), str(self.nsdir))
            sh("mount", "--make-private", str(self.nsdir))
        self.mntns.touch()
        sh("unshare", f"--mount={self.mntns}", "--propagation", "private", "true")
        for src, copy in BIND_DIRS.items():
            Path(src).mkdir(parents=True, exist_ok=True)
            sh("nsenter", f"--mount={self.mntns}", "--", "mount", "--bind", str(self.root / copy), src)

    def _sshd_up(self) -> None:
        d = self.ssh_dir
        d.mkdir(mode=0o700, exist_ok=True)
        key = d / "ssh_host_ed25519_key"
        if not key.exists():
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{self.name}", "-f", str(key))
        (d / "authorized_keys").touch(mode=0o600)
        cfg = d / "sshd_config"
        cfg.write_text(
            f"ListenAddress {self.address}\nPort 22\nHostKey {key}\nPidFile {d / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\n"
            "MaxStartups 100:30:200\nMaxSessions 100\nSubsystem sftp internal-sftp\n"
            "AcceptEnv LANG LC_*\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        if _alive(d / "sshd.pid"):
            return
        self.run("/usr/sbin/sshd", "-f", str(cfg), "-E", str(d / "sshd.log"))
        _wait(lambda: _alive(d / "sshd.pid"), f"sshd of {self.name}")

    def _libvirt_up(self) -> None:
        run_dir = self.root / "run-libvirt"
        logd_pid = self.root / "virtlogd.pid"  # root's default, /run/virtlogd.pid, is shared by all hosts
        if not _alive(logd_pid):
            self.run("virtlogd", "-d", "-p", str(logd_pid))
            _wait(lambda: _alive(logd_pid), f"virtlogd of {self.name}")
        pidfile = self.root / "libvirtd.pid"
        if not _alive(pidfile):
            self.run("libvirtd", "-d", "-p", str(pidfile))
            _wait(lambda: (run_dir / "libvirt-sock").exists() and _alive(pidfile), f"libvirtd of {self.name}")
        _wait(lambda: self.run("virsh", "-c", "qemu:///system", "version", check=False).returncode == 0,
              f"libvirtd of {self.name} answering")

    # -- down -------------------------------------------------------------------------------
    def down(self) -> None:
        # Every process of the host: the daemons, sshd sessions, qemu, virt-sysprep and its appliance.
        for _ in range(3):
            pids = self._pids()
            if not pids:
                break
            for pid in pids:
                _kill(pid, signal.SIGTERM)
            _wait(lambda: not self._pids(), "host processes to exit", timeout=5, fail=False)
        for pid in self._pids():
            _kill(pid, signal.SIGKILL)
        if self.mntns.exists():
            sh("umount", str(self.mntns), check=False)
        if _is_mountpoint(self.nsdir):
            sh("umount", "-l", str(self.nsdir), check=False)
        if sh("ip", "link", "show", self.veth_out, check=False).returncode == 0:
            sh("ip", "link", "del", self.veth_out, check=False)
        if self.netns.exists():
            sh("ip", "netns", "del", self.name, check=False)
        _forget_neighbour(self.address)
        shutil.rmtree(self.root, ignore_errors=True)
        _release_index(self.name)
        if not any(p.name.startswith(PREFIX) for p in Path("/run/netns").glob("*")):
            sh("ip", "link", "del", BRIDGE, check=False)

    def _pids(self) -> list[int]:
        pids = set()
        if self.netns.exists():
            out = sh("ip", "netns", "pids", self.name, check=False).stdout
            pids |= {int(p) for p in out.split()}
        if self.mntns.exists():
            try:
                ino = os.stat(self.mntns).st_ino
            except OSError:
                ino = None
            for p in Path("/proc").glob("[0-9]*"):
                try:
                    if os.stat(p / "ns" / "mnt").st_ino == ino:
                        pids.add(int(p.name))
                except OSError:
                    pass
        pids.discard(os.getpid())
        return sorted(pids)


def _bridge_up() -> None:
    if sh("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
    if Path(f"/sys/class/net/{BRIDGE}/address").read_text().strip() != BRIDGE_MAC:
        sh("ip", "link", "set", BRIDGE, "address", BRIDGE_MAC)
    sh("ip", "addr", "replace", f"{BRIDGE_ADDR}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")


def _forget_neighbour(address: str) -> None:
    """Drop the machine's neighbour (ARP) entry for a test host's address, if the bridge has one."""
    if sh("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        sh("ip", "neigh", "flush", "to", address, "dev", BRIDGE, check=False)


def _is_mountpoint(p: Path) -> bool:
    return sh("mountpoint", "-q", str(p), check=False).returncode == 0


def _is_nsfs(p: Path) -> bool:
    out = sh("findmnt", "-n", "-o", "FSTYPE", "--target", str(p), check=False).stdout.strip()
    return out == "nsfs"


def _alive(pidfile: Path) -> bool:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
        return True
    except (OSError, ValueError):
        return False


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait(cond, what: str, timeout: float = 30, fail: bool = True) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    if fail:
        raise SystemExit(f"timed out waiting for {what}")
    return False


def all_hosts() -> list[str]:
    names = {p.name for p in Path("/run/netns").glob(PREFIX + "*")} if Path("/run/netns").exists() else set()
    if BASE.exists():
        names |= {p.name for p in BASE.iterdir() if p.is_dir() and p.name.startswith(PREFIX)}
    return sorted(names)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "up":
        for name in rest:
            print(json.dumps(TestHost(name).up()), flush=True)
    elif cmd == "down":
        for name in all_hosts() if rest == ["--all"] else rest:
            TestHost(name).down()
    elif cmd == "info":
        print(json.dumps(TestHost(rest[0]).info()))
    elif cmd == "list":
        print("\n".join(all_hosts()))
    elif cmd == "exec":
        host, cmdline = rest[0], rest[rest.index("--") + 1:]
        os.execvp("nsenter", TestHost(host).nsenter(*cmdline))
    else:
        raise SystemExit(f"unknown command {cmd!r}; see --help")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
