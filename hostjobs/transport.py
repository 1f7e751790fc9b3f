"""SSH to hypervisor hosts, with the host key pinned.

Every host gets a directory of generated files under ``<data dir>/hosts/<id>/``: a ``known_hosts``
holding only its pinned key, an ssh ``config`` (strict checking, batch mode, our identity only,
connection sharing with its sockets in ``<data dir>/cm/``) and an ``ssh`` wrapper that libvirt's
``qemu+ssh`` uses as its ``command=``, so libvirt and our own commands share one pinned, multiplexed
connection. Every directory is private (0700, ours, or refused: vmseal/private.py), every file 0600
(the wrapper 0700). Nothing here ever accepts a new key.

Commands are argv lists; the remote shell sees them joined with ``shlex.join``, so no user string
reaches it unquoted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from hostjobs.errors import HostCommandFailed, HostKeyMismatch, HostUnreachable
from vmseal.private import private_dir, write_private

log = logging.getLogger("vmseal.transport")
_keygen_lock = threading.Lock()
_warned_long = False
# A unix socket's path is at most 107 bytes; ssh binds the master's socket as "<ControlPath>.<16 random
# characters>" first, then renames it: "<control dir>/<12-hex fingerprint>" must leave room for that.
SOCKET_PATH_MAX = 107
CONTROL_NAME_LEN = 1 + 12 + 17
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")


def app_key() -> Path:
    """The app's SSH private key; generated on first use (like oVirt's engine key)."""
    key = Path(settings.VMSEAL_SSH_KEY)
    if not key.exists():
        with _keygen_lock:
            if not key.exists():
                private_dir(key.parent, parents=True)
                # umask 077: the public half too is 0600, like everything else vmseal makes
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vmseal", "-f", str(key)],
                    check=True, capture_output=True, umask=0o077,
                )
    return key


def app_public_key() -> str:
    return Path(str(app_key()) + ".pub").read_text().strip()


def parse_host_key(line: str) -> tuple[str, str]:
    """Return (type, base64) of a public key line, or raise ValueError with a clear reason."""
    import base64
    import binascii

    parts = line.strip().split()
    if len(parts) < 2:
        raise ValueError("expected '<type> <base64> [comment]', as in the host's ssh_host_*_key.pub")
    ktype, blob = parts[0], parts[1]
    if ktype not in KEY_TYPES:
        raise ValueError(f"unsupported key type {ktype!r}; use one of {', '.join(KEY_TYPES)}")
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key is not valid base64") from None
    n = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    if n < 0 or raw[4:4 + n].decode("ascii", "replace") != ktype:
        raise ValueError("the key's data does not match its type")
    return ktype, blob


@dataclass(frozen=True)
class SSHTarget:
    """The files that pin and reach one host."""

    host_id: int
    address: str
    port: int
    user: str
    host_key: str

    @classmethod
    def of(cls, host) -> SSHTarget:
        return cls(host.pk, host.address, host.port, host.ssh_user, host.host_key)

    @property
    def dir(self) -> Path:
        return Path(settings.DATA_DIR) / "hosts" / str(self.host_id)

    @staticmethod
    def control_dir() -> Path | None:
        """Where the shared connections' sockets live: ``<data dir>/cm``, private like the data dir
        (a socket there answers our SSH commands, so nobody else may be able to put one there). None
        when that path is too long for a unix socket: connections are then not shared."""
        cm_dir = Path(settings.DATA_DIR) / "cm"
        if len(os.fsencode(cm_dir)) + CONTROL_NAME_LEN > SOCKET_PATH_MAX:
            return None
        return cm_dir

    @property
    def config(self) -> Path:
        return self.dir / "config"

    @property
    def wrapper(self) -> Path:
        return self.dir / "ssh"

    @property
    def fingerprint(self) -> str:
        seed = f"{settings.DATA_DIR}|{self.address}|{self.port}|{self.user}|{self.host_key}"
        return hashlib.sha256(seed.encode()).hexdigest()[:12]

    def materialize(self) -> SSHTarget:
        """Write known_hosts, config and wrapper if they differ from what they should be."""
        try:
            ktype, blob = parse_host_key(self.host_key)
        except ValueError as e:
            raise HostKeyMismatch(f"host {self.address}: its pinned host key is not usable ({e})") from None
        name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        # Control sockets are keyed by the pinned key, so a re-pinned host never reuses a connection made
        # under the old key; they live in a private directory (see control_dir), never in /tmp.
        private_dir(settings.DATA_DIR)
        cm_dir = self.control_dir()
        if cm_dir is None:
            global _warned_long
            if not _warned_long:
                log.warning("data directory %s: its path is too long for SSH control sockets (at most %d bytes); "
                            "SSH connections to hosts are not shared", settings.DATA_DIR,
                            SOCKET_PATH_MAX - CONTROL_NAME_LEN - len("/cm"))
                _warned_long = True
            sharing = "  ControlMaster no\n  ControlPath none\n"
        else:
            private_dir(cm_dir)
            sharing = f"  ControlMaster auto\n  ControlPath {cm_dir}/{self.fingerprint}\n  ControlPersist 60\n"
        files = {
            "known_hosts": f"{name} {ktype} {blob}\n",
            "config": (
                "Host *\n"
                f"  IdentityFile {app_key()}\n"
                "  IdentitiesOnly yes\n"
                f"  UserKnownHostsFile {self.dir / 'known_hosts'}\n"
                "  GlobalKnownHostsFile /dev/null\n"
                "  StrictHostKeyChecking yes\n"
                "  UpdateHostKeys no\n"
                "  CheckHostIP no\n"
                "  BatchMode yes\n"
                f"  ConnectTimeout {settings.VMSEAL_SSH_CONNECT_TIMEOUT}\n"
                "  ServerAliveInterval 5\n"
                "  ServerAliveCountMax 3\n"
                f"{sharing}"
                "  LogLevel ERROR\n"
            ),
            "ssh": f"#!/bin/sh\nexec ssh -F {shlex.quote(str(self.config))} \"$@\"\n",
        }
        private_dir(self.dir.parent)
        private_dir(self.dir)
        for fname, content in files.items():
            p = self.dir / fname
            if not p.exists() or p.read_text() != content:
                write_private(p, content, 0o700 if fname == "ssh" else 0o600)
        return self

    def ssh_argv(self, remote: Sequence[str]) -> list[str]:
        return [
            "ssh", "-F", str(self.config), "-p", str(self.port), "-l", self.user, self.address,
            "--", shlex.join(remote),
        ]


def _classify(stderr: str, target: SSHTarget) -> Exception:
    s = stderr.strip()
    if "host key" in s.lower() and ("verification failed" in s.lower() or "changed" in s.lower()
                                     or "no " in s.lower()):
        return HostKeyMismatch(
            f"host {target.address}:{target.port} did not present its pinned host key; refusing to connect",
            detail=s[-2000:],
        )
    return HostUnreachable(f"cannot reach {target.user}@{target.address}:{target.port} over SSH", detail=s[-2000:])


def run(host, argv: Sequence[str], *, input: bytes | None = None, timeout: float | None = 120,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run ``argv`` on the host; stdout and stderr are captured (as text).

    Raises HostKeyMismatch / HostUnreachable for ssh's own failures (exit 255) and, with ``check``,
    HostCommandFailed for a non-zero remote exit.
    """
    target = SSHTarget.of(host).materialize()
    cmd = target.ssh_argv(argv)
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise HostCommandFailed(f"{argv[0]} on {host} timed out after {timeout:.0f}s") from e
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    log.debug("ssh %s %s -> %s in %.2fs", host, argv[0], proc.returncode, time.monotonic() - started)
    if proc.returncode == 255:
        raise _classify(err, target)
    if check and proc.returncode != 0:
        raise HostCommandFailed(
            f"{argv[0]} on {host} exited {proc.returncode}: {_last_error_line(err or out)}",
            detail=(err or out)[-4000:], exit_code=proc.returncode,
        )
    proc.stdout, proc.stderr = out, err
    return proc


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error" in ln.lower():
            return ln[:500]
    return lines[-1][:500] if lines else "(no output)"


def close(host) -> None:
    """Stop the shared connection to a host (tests, host removal)."""
    target = SSHTarget.of(host)
    if target.config.exists():
        subprocess.run(["ssh", "-F", str(target.config), "-O", "exit", "-p", str(target.port),
                        "-l", target.user, target.address], capture_output=True, timeout=10)
