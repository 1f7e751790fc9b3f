"""Calls to vmseal's helper on a host (``hooks/vmseal_host.py``), deployed on demand.

The helper and the volume rules are shipped as one bundle to ``/var/lib/vmseal/lib/<digest>/``;
a call that finds its bundle missing uploads it (one tar over the same SSH connection) and retries,
so a normal call is one SSH round trip and a changed helper never mixes with an old one.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

from hostjobs import transport
from hostjobs.errors import HostCommandFailed, VolumeRefused

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = {"vmseal_host.py": ROOT / "hooks" / "vmseal_host.py", "vmseal_rules.py": ROOT / "volumes" / "rules.py",
          **{name: ROOT / "hooks" / name for name in ("libvirt_hook.py", "guest_prepare.sh", "guest_audit.sh")}}
REMOTE_LIB = "/var/lib/vmseal/lib"
MISSING = 111  # exit status of the probe when the bundle is not on the host
PYTHON = "/usr/bin/python3"  # the host's Debian python (the helper is stdlib only)


@cache
def bundle() -> tuple[str, bytes]:
    h = hashlib.sha256()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, path in sorted(BUNDLE.items()):
            data = path.read_bytes()
            h.update(name.encode() + b"\0" + data)
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return h.hexdigest()[:16], buf.getvalue()


def remote_dir() -> str:
    return f"{REMOTE_LIB}/{bundle()[0]}"


def install(host) -> None:
    digest, tar = bundle()
    final = f"{REMOTE_LIB}/{digest}"
    tmp = f"{final}.tmp"
    script = (f"set -e; rm -rf {tmp}; mkdir -p {tmp}; tar -x -C {tmp}; "
              f"if [ -e {final} ]; then rm -rf {tmp}; else mv -T {tmp} {final}; fi")
    transport.run(host, ["sh", "-c", script], input=tar, timeout=60)


def helper(host, args: Sequence[str], *, timeout: float = 600, on_line: Callable[[str], None] | None = None,
           input: bytes | None = None):
    """Run a helper subcommand; return its JSON result. Raises VolumeRefused when the host refused
    by the volume rules, HostCommandFailed on other failures."""
    script = f"{remote_dir()}/vmseal_host.py"
    argv = ["sh", "-c", f'test -f {script} || exit {MISSING}; exec {PYTHON} {script} "$@"', "vmseal_host", *args]
    for attempt in (1, 2):
        proc = transport.run(host, argv, timeout=timeout, on_line=on_line, check=False, input=input)
        if proc.returncode == MISSING and attempt == 1:
            install(host)
            continue
        break
    result = _last_json(proc.stdout)
    if proc.returncode == 3 and result:
        raise VolumeRefused(result.get("message", "refused by the host"), detail=result.get("error", ""))
    if result is None or (proc.returncode not in (0,) and "exit_code" not in result):
        msg = (result or {}).get("message") or transport._last_error_line(proc.stdout + proc.stderr)
        raise HostCommandFailed(f"{args[0]} on {host} failed: {msg}",
                                detail=(proc.stdout + proc.stderr)[-4000:], exit_code=proc.returncode)
    return result


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def install_hooks(host, callback_url: str) -> None:
    """Deploy the helper and the libvirt hooks (qemu, daemon), write the hooks' configuration (the
    callback secret travels on stdin, never in argv), and make libvirtd re-read its hooks (SIGHUP to
    the libvirtd of this mount namespace: test hosts share one PID namespace)."""
    install(host)
    lib = remote_dir()
    conf = json.dumps({"callback_url": callback_url, "secret": host.callback_secret, "host": host.pk}).encode()
    script = (
        "set -e; umask 077; "
        f"ln -sfn {lib} {REMOTE_LIB}/current; "
        "mkdir -p /etc/libvirt/hooks; "
        f"for h in qemu daemon; do install -m 0755 {lib}/libvirt_hook.py /etc/libvirt/hooks/$h; done; "
        "cat > /var/lib/vmseal/hooks.json.tmp; mv /var/lib/vmseal/hooks.json.tmp /var/lib/vmseal/hooks.json; "
        "me=$(readlink /proc/self/ns/mnt); "
        "for p in $(pgrep -x libvirtd); do [ \"$(readlink /proc/$p/ns/mnt)\" = \"$me\" ] && kill -HUP $p; done; "
        "true"
    )
    transport.run(host, ["sh", "-c", script], input=conf, timeout=60)


def sysprep_operations(host) -> dict[str, bool]:
    """``virt-sysprep --list-operations`` of the host: {name: enabled by default}."""
    return helper(host, ["sysprep-operations"], timeout=60)["operations"]


def host_info(host) -> dict:
    return helper(host, ["host-info", "--pool", host.pool_path], timeout=60)


# -- storage verbs -----------------------------------------------------------------------------------
def create_volume(host, vol_id: str, source: str, source_format: str) -> dict:
    from django.conf import settings

    return helper(host, ["create-volume", "--pool", host.pool_path, "--id", vol_id, "--source", source,
                         "--source-format", source_format], timeout=settings.VMSEAL_COPY_TIMEOUT)


def update_volume(host, vol_id: str, *, generation: int, legality: str | None = None,
                  type: str | None = None) -> dict:
    args = ["update-volume", "--pool", host.pool_path, "--id", vol_id, "--generation", str(generation)]
    if legality:
        args += ["--legality", legality]
    if type:
        args += ["--type", type]
    return helper(host, args, timeout=60)


def delete_volume(host, vol_id: str) -> dict:
    return helper(host, ["delete-volume", "--pool", host.pool_path, "--id", vol_id], timeout=120)


def volume_info(host, vol_id: str) -> dict:
    return helper(host, ["volume-info", "--pool", host.pool_path, "--id", vol_id], timeout=60)


def pool_scan(host) -> dict:
    """Every file of the host's pool with each volume's metadata, and the files that are not volumes."""
    return helper(host, ["pool-scan", "--pool", host.pool_path], timeout=120)


def run_on_volumes(host, vol_ids: Sequence[str], argv: Sequence[str], *, env: dict[str, str],
                   timeout: float, on_line: Callable[[str], None] | None = None) -> dict:
    """Run ``argv`` on the host after the host checked that none of ``vol_ids`` is SHARED."""
    args = ["run", "--pool", host.pool_path]
    for v in vol_ids:
        args += ["--writable", v]
    for k, v in env.items():
        args += ["--env", f"{k}={v}"]
    return helper(host, [*args, "--", *argv], timeout=timeout, on_line=on_line)
