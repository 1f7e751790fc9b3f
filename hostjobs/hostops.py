"""Calls to vmseal's helper on a host (``hooks/vmseal_host.py``), deployed on demand.

The helper and the volume rules are shipped as one bundle to ``/var/lib/vmseal/lib/<digest>/``;
a call that finds its bundle missing uploads it (one tar over the same SSH connection) and retries,
so a normal call is one SSH round trip and a changed helper never mixes with an old one.

This module is the one home of host commands: a builder per verb of the helper returns its argument
list (``create_volume``, ``update_volume``, ``delete_volume``, ``volume_info``, ``pool_scan``, ``run``,
``host_info``, ``sysprep_operations``, ``job_*``). Callers run them through the host's port
(``hostjobs.port``): ``port.for_host(host).helper(args)``, or as a host job's command (``runner``).
``helper`` is how the real port runs a verb over SSH.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from hostjobs import transport
from hostjobs.errors import HostCommandFailed, VolumeRefused

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = {"vmseal_host.py": ROOT / "hooks" / "vmseal_host.py", "vmseal_rules.py": ROOT / "volumes" / "rules.py",
          **{name: ROOT / "hooks" / name for name in ("libvirt_hook.py", "guest_prepare.sh", "guest_audit.sh",
                                                      "guest_firstboot.sh", "vmseal_firstboot.sh")}}
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


def helper(host, args: Sequence[str], *, timeout: float = 600, input: bytes | None = None) -> dict:
    """Run a helper subcommand; return its JSON result. Raises VolumeRefused when the host refused
    by the volume rules, HostCommandFailed on other failures."""
    script = f"{remote_dir()}/vmseal_host.py"
    argv = ["sh", "-c", f'test -f {script} || exit {MISSING}; exec {PYTHON} {script} "$@"', "vmseal_host", *args]
    for attempt in (1, 2):
        proc = transport.run(host, argv, timeout=timeout, check=False, input=input)
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


# -- the helper's verbs: one builder each ---------------------------------------------------------
# Each returns the argument list of one verb of hooks/vmseal_host.py (its usage lists them); nothing
# here runs it. The caller runs it through the host's port (``hostjobs.port``): a direct call
# (``port.helper(args)``) or a host job's command (``runner.run(..., args)``).
def create_volume(pool: str, vol_id, *, source: str, source_format: str, rate_limit: int = 0) -> list[str]:
    """Copy ``source`` into a new LEAF volume (ILLEGAL until its data is complete); ``rate_limit``:
    bytes/s, 0 for none."""
    return ["create-volume", "--pool", pool, "--id", str(vol_id), "--source", source, "--source-format",
            source_format, *(["--rate-limit", str(rate_limit)] if rate_limit else [])]


def create_thin_volume(pool: str, vol_id, *, parent_pool: str, parent) -> list[str]:
    """A new LEAF qcow2 volume whose backing file is the SHARED volume ``parent`` of ``parent_pool``
    (``qemu-img create -b ... -F ...``): the parent is only read, ever."""
    return ["create-volume", "--pool", pool, "--id", str(vol_id), "--parent", str(parent), "--parent-pool",
            parent_pool]


def write_seed(pool: str, vm_uuid) -> list[str]:
    """Write a VM's seed ISO (its bytes on the call's stdin) as ``<pool>/<uuid>.seed.iso``, 0600."""
    return ["write-seed", "--pool", pool, "--uuid", str(vm_uuid)]


def delete_seed(pool: str, vm_uuid) -> list[str]:
    return ["delete-seed", "--pool", pool, "--uuid", str(vm_uuid)]


def seed_path(pool: str, vm_uuid) -> str:
    return f"{pool}/{vm_uuid}.seed.iso"


CONSOLE_DIR = "/var/lib/vmseal/console"  # made by write-seed, 0700


def console_log(vm_uuid) -> str:
    return f"{CONSOLE_DIR}/{vm_uuid}.log"


def update_volume(pool: str, vol_id, *, generation: int, legality: str | None = None,
                  type: str | None = None) -> list[str]:
    """vdsm's update_volume: the change, if the host's volume is still at ``generation``."""
    args = ["update-volume", "--pool", pool, "--id", str(vol_id), "--generation", str(generation)]
    if legality:
        args += ["--legality", legality]
    if type:
        args += ["--type", type]
    return args


def delete_volume(pool: str, vol_id) -> list[str]:
    return ["delete-volume", "--pool", pool, "--id", str(vol_id)]


def volume_info(pool: str, vol_id) -> list[str]:
    return ["volume-info", "--pool", pool, "--id", str(vol_id)]


def pool_scan(pool: str) -> list[str]:
    """Every file of the pool with each volume's metadata, and the files that are not volumes."""
    return ["pool-scan", "--pool", pool]


def run(argv: Sequence[str], *, pool: str, writable: Sequence = (), env: dict[str, str] | None = None,
        report_disk: str | None = None) -> list[str]:
    """Run ``argv`` once the host checked that none of the ``writable`` volumes is SHARED; ``env``
    added to its environment; ``report_disk``: the guest's report disk, made before, read after."""
    args = ["run", "--pool", pool]
    if report_disk:
        args += ["--report-disk", report_disk]
    for v in writable:
        args += ["--writable", str(v)]
    for k, v in (env or {}).items():
        args += ["--env", f"{k}={v}"]
    return [*args, "--", *argv]


def host_info(pool: str) -> list[str]:
    """What host_check reports: versions, KVM, free space in the pool, the appliance cache."""
    return ["host-info", "--pool", pool]


def sysprep_operations() -> list[str]:
    """``virt-sysprep --list-operations`` of the host: {"operations": {name: enabled by default}}."""
    return ["sysprep-operations"]


def job_start(job_id) -> list[str]:
    """Start a host job; its spec ({"args": a verb's arguments, ...}) goes on stdin."""
    return ["job-start", "--id", str(job_id)]


def job_status(job_id, log_offset: int = 0) -> list[str]:
    return ["job-status", "--id", str(job_id), *(["--log-offset", str(log_offset)] if log_offset else [])]


def job_abort(job_id) -> list[str]:
    return ["job-abort", "--id", str(job_id)]


def job_clear(job_id) -> list[str]:
    return ["job-clear", "--id", str(job_id)]
