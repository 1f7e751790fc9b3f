#!/usr/bin/python3
"""vmseal's helper on a hypervisor host. Stdlib only; it imports nothing of the app. Shipped next to
``vmseal_rules.py`` (the app's volumes/rules.py) and what virt-sysprep runs or uploads for vmseal in
the guest, inside its appliance (``guest_prepare.sh``, ``guest_firstboot.sh`` with the first-boot agent
``vmseal_firstboot.sh``, ``guest_audit.sh``). Nothing here reads or
writes a guest's files: the only guest-made bytes it reads are the report disk's (``run
--report-disk``), which it prints into the job's log, filtered, as the guest's word.

Every subcommand prints one JSON object on its last stdout line. On refusal it prints
``{"error": <code>, "message": ...}`` and exits 3; other failures exit 1.

Volumes live in a pool directory as ``<id>.qcow2`` with a metadata file ``<id>.meta`` beside it
(JSON: id, type, legality, generation, parent, format). The metadata file is the truth; it is
replaced atomically (write + fsync + rename), under an exclusive lock of the pool (an flock on a
0600 file in /var/lib/vmseal/locks, held across read-check-write), so writers on this host serialise;
readers (volume-info, pool-scan) take it shared. Everything the helper makes is root's alone: it runs
under umask 077 (what it starts too: qemu-img, virt-sysprep), creates its files with explicit modes,
and makes a pool directory 0700, volumes and their metadata 0600, and both 0400 once SHARED.

  create-volume --pool P --id ID --source PATH --source-format FMT
  create-volume --pool P --id ID --parent ID --parent-pool P
                              a thin volume: a qcow2 overlay whose backing file is the parent volume (which
                              must be SHARED and LEGAL; never written), format always given (-F); its
                              metadata names the parent
  update-volume --pool P --id ID --generation N [--legality L] [--type T]
  delete-volume --pool P --id ID
  volume-info   --pool P --id ID
  pool-scan     --pool P        every file of the pool (lstat only: no symlink followed, no unknown file
                              opened), each volume's metadata, and the files that are not a volume's
  write-seed    --pool P --uuid U   stdin: a VM's NoCloud seed ISO (at most 16 MiB), written 0600 as
                              P/U.seed.iso (atomically); makes the VM pool and the console log directory
                              (/var/lib/vmseal/console) 0700
  delete-seed   --pool P --uuid U
  run [--writable ID]... [--pool P] [--env K=V]... [--report-disk NAME] -- ARGV...
                              refuses SHARED volumes, then runs ARGV; stops it if the pool stays full (a
                              paused appliance never ends by itself). --report-disk: a 1 MiB raw file
                              made before (REPORT_MAGIC first) and read after: its vmseal-* lines are
                              printed, then it is removed

Host jobs (durable, detached; state under /var/lib/vmseal/jobs/<id>/):
  job-start  --id ID          stdin: {"args": [subcommand...], "callback_url": U, "secret": S, "host": N,
                              "files": {NAME: TEXT}}
                              returns at once; starting an existing job never runs it twice. The job's
                              command runs in the job's directory, where each of "files" is written
                              0600 first (what must not be in an argv) and removed when it ends
  job-status --id ID [--log-offset N]
  job-abort  --id ID
  job-clear  --id ID          removes a terminal job's directory
"""

import argparse
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmseal_rules as rules  # noqa: E402

ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Refused(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def vol_paths(pool, vol_id):
    if not ID_RE.match(vol_id):
        raise Refused("bad_volume_id", f"not a volume id: {vol_id!r}")
    if not os.path.isabs(pool):
        raise Refused("bad_pool", "pool path must be absolute")
    return os.path.join(pool, vol_id + ".qcow2"), os.path.join(pool, vol_id + ".meta")


LOCK_DIR = os.environ.get("VMSEAL_LOCK_DIR", "/var/lib/vmseal/locks")


@contextlib.contextmanager
def pool_lock(pool, shared=False):
    """Hold the pool's metadata lock: exclusive for a read-check-write, shared to read. The lock file
    lives outside the pool (a full pool can still be cleaned up; the pool holds volumes only)."""
    os.makedirs(LOCK_DIR, mode=0o700, exist_ok=True)
    name = "pool-" + hashlib.sha256(os.path.normpath(pool).encode()).hexdigest()[:16] + ".lock"
    fd = os.open(os.path.join(LOCK_DIR, name), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_meta(meta_path):
    try:
        with open(meta_path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise Refused("no_such_volume", f"no volume metadata at {meta_path}") from None


def private_mode(meta):
    """A volume's files are root's alone: read-write while writable, read-only once SHARED."""
    return 0o400 if meta["type"] == rules.SHARED else 0o600


def write_meta(meta_path, meta):
    tmp = meta_path + ".tmp"
    mode = private_mode(meta)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    os.fchmod(fd, mode)  # a crashed write's leftover keeps its mode through O_TRUNC
    with os.fdopen(fd, "w") as f:
        json.dump(meta, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, meta_path)
    dfd = os.open(os.path.dirname(meta_path), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def image_info(path):
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], check=True, capture_output=True,
                         text=True).stdout
    info = json.loads(out)
    return {"virtual_size": info.get("virtual-size", 0), "actual_size": info.get("actual-size", 0),
            "format": info.get("format"), "backing": info.get("full-backing-filename") or info.get("backing-filename")}


def cmd_create(a):
    data, meta_path = vol_paths(a.pool, a.id)
    if bool(a.source) == bool(a.parent) or bool(a.source) != bool(a.source_format):
        raise Refused("bad_arguments", "create-volume needs either --source and --source-format, or --parent")
    if a.parent:
        if not a.parent_pool or os.path.normpath(a.parent_pool) == os.path.normpath(a.pool):
            raise Refused("bad_pool", "a thin volume's parent is in another pool (--parent-pool)")
        backing, parent_meta_path = vol_paths(a.parent_pool, a.parent)
        with pool_lock(a.parent_pool, shared=True):
            parent = read_meta(parent_meta_path)
        if (parent.get("type"), parent.get("legality")) != (rules.SHARED, rules.LEGAL):
            raise Refused("parent_not_shared", f"volume {a.parent} is {parent.get('type')}/{parent.get('legality')}: "
                                               "only a SHARED, LEGAL volume can back another")
        command = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", parent.get("format", "qcow2")]
    else:
        rate = ["-r", str(a.rate_limit)] if a.rate_limit else []
        command = ["qemu-img", "convert", *rate, "-f", a.source_format, "-O", "qcow2", a.source]
    searchable_pool(a.pool)
    if a.parent:
        searchable_pool(a.parent_pool)  # qemu opens the backing file through it
    # Creation in progress: ILLEGAL until the data is complete (vdsm does the same).
    meta = {"id": a.id, "type": rules.LEAF, "legality": rules.ILLEGAL, "generation": 0, "parent": a.parent or None,
            "format": "qcow2"}
    with pool_lock(a.pool):
        if os.path.exists(meta_path):
            rules.check_writable(read_meta(meta_path))  # never overwrite a SHARED volume, even on a retried copy
        write_meta(meta_path, meta)
    tmp = data + ".part"
    # qemu-img creates it 0644 less the umask (077 here): 0600, never readable by others even for a moment
    proc = subprocess.run([*command, tmp], capture_output=True, text=True)
    if proc.returncode != 0:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        why = proc.stderr.strip() or proc.stdout.strip() or (
            f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}")
        raise RuntimeError(f"qemu-img {command[1]} failed: " + why)
    with pool_lock(a.pool):
        if _read_meta_or_none(meta_path) != meta:
            raise Refused("volume_changed", f"volume {a.id} was changed or deleted while its data was copied")
        os.replace(tmp, data)
        meta["legality"] = rules.LEGAL
        write_meta(meta_path, meta)
    return {**meta, **image_info(data), "path": data}


VMSEAL_DIR = "/var/lib/vmseal"


def searchable_pool(pool):
    """A pool, made if missing, that qemu can reach: libvirt runs a VM's qemu as its own user
    (libvirt-qemu) and hands it the VM's disk files and their backing files for the run (DAC labelling),
    so the pool directory, and vmseal's own directories above it, may be searched by others (0711) but
    never listed; every file in it stays root's 0600 (0400 once SHARED) until libvirt hands it to qemu.
    Directories above the pool that are not vmseal's are left as the host's admin made them."""
    os.makedirs(pool, mode=0o711, exist_ok=True)
    d = os.path.normpath(pool)
    while True:
        st = os.lstat(d)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) != 0o711:
            os.chmod(d, 0o711)
        if d == VMSEAL_DIR or not d.startswith(VMSEAL_DIR + "/"):
            break
        d = os.path.dirname(d)


def _read_meta_or_none(meta_path):
    try:
        return read_meta(meta_path)
    except (Refused, ValueError):
        return None


def cmd_update(a):
    data, meta_path = vol_paths(a.pool, a.id)
    with pool_lock(a.pool):  # two updates of one generation: the second sees the first's and is refused
        meta = read_meta(meta_path)
        new = rules.plan_update(meta, generation=a.generation, legality=a.legality, type=a.type)
        if new["type"] == rules.SHARED:
            os.chmod(data, private_mode(new))
        write_meta(meta_path, new)
    return {**new, "path": data, "mode": oct(os.stat(data).st_mode & 0o777)}


def cmd_delete(a):
    data, meta_path = vol_paths(a.pool, a.id)
    with pool_lock(a.pool):
        meta = _read_meta_or_none(meta_path)  # unreadable metadata: nothing to mark, the volume goes anyway
        if isinstance(meta, dict) and meta.get("legality") != rules.ILLEGAL and not rules.meta_problems(meta):
            # Mark ILLEGAL first: if removing the data fails, what stays behind is never usable.
            meta = dict(meta, legality=rules.ILLEGAL, generation=rules.next_generation(meta["generation"]))
            write_meta(meta_path, meta)
        for p in (data + ".part", data):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        try:
            os.unlink(meta_path)
        except FileNotFoundError:
            pass
    return {"id": a.id, "deleted": True}


def cmd_info(a):
    data, meta_path = vol_paths(a.pool, a.id)
    with pool_lock(a.pool, shared=True):
        meta = read_meta(meta_path)
        st = os.stat(data)
    return {**meta, "path": data, "mode": oct(st.st_mode & 0o777), **image_info(data)}


VOLUME_FILE_RE = re.compile("^(" + ID_RE.pattern[1:-1] + r")\.(qcow2|meta|qcow2\.part)$")
META_MAX = 64 * 1024


def _kind(mode):
    return ("file" if stat.S_ISREG(mode) else "symlink" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode)
            else "other")


def _scan_meta(path):
    """(metadata, None) or (None, why). Opened without following a symlink or blocking on a FIFO, and
    read only if it is a regular file; at most META_MAX bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        return None, f"cannot open: {e.strerror}"
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, "not a regular file"
        raw = f.read(META_MAX + 1)
    if len(raw) > META_MAX:
        return None, "larger than 64 KiB"
    try:
        meta = json.loads(raw.decode("utf-8"))
    except ValueError as e:
        return None, f"not JSON: {e}"
    return meta, None


def cmd_pool_scan(a):
    """Every entry of the pool (lstat: symlinks are never followed), grouped: volumes (``<uuid>.qcow2``,
    ``.meta``, ``.qcow2.part``, regular files) with their metadata checked by the volume rules, and
    unknown entries (anything else), which are listed, never opened. Under the pool's shared lock, so no
    metadata write is seen half-done."""
    if not os.path.isabs(a.pool):
        raise Refused("bad_pool", "pool path must be absolute")
    if not os.path.isdir(a.pool):
        return {"pool": a.pool, "exists": False, "volumes": [], "unknown": [], "files": []}
    files, volumes, unknown = [], {}, []
    with pool_lock(a.pool, shared=True):
        with os.scandir(a.pool) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            item = {"name": e.name, "kind": _kind(st.st_mode), "size": st.st_size,
                    "allocated": st.st_blocks * 512, "mode": oct(stat.S_IMODE(st.st_mode))}
            files.append(item)
            m = VOLUME_FILE_RE.match(e.name)
            if not m or item["kind"] != "file":
                unknown.append(item)
                continue
            vol = volumes.setdefault(m.group(1), {"id": m.group(1), "meta": None, "meta_error": None,
                                                  "data": False, "part": False, "size": None,
                                                  "allocated": None, "mode": None})
            if m.group(2) == "meta":
                meta, why = _scan_meta(e.path)
                problems = [why] if why else rules.meta_problems(meta, m.group(1))
                vol["meta"], vol["meta_error"] = (meta, None) if not problems else (None, "; ".join(problems))
            elif m.group(2) == "qcow2":
                vol.update(data=True, size=item["size"], allocated=item["allocated"], mode=item["mode"])
            else:
                vol["part"] = True
    for vol in volumes.values():
        if vol["meta"] is None and vol["meta_error"] is None:
            vol["meta_error"] = "no metadata file"
    return {"pool": a.pool, "exists": True, "volumes": [volumes[k] for k in sorted(volumes)], "unknown": unknown,
            "files": files}


CONSOLE_DIR = "/var/lib/vmseal/console"  # where virtlogd writes VMs' serial console logs
SEED_MAX = 16 << 20


def seed_path(pool, vm_uuid):
    if not ID_RE.match(vm_uuid):
        raise Refused("bad_uuid", f"not a VM uuid: {vm_uuid!r}")
    if not os.path.isabs(pool) or os.path.normpath(pool) != pool:
        raise Refused("bad_pool", "pool path must be absolute and normalised")
    return os.path.join(pool, vm_uuid + ".seed.iso")


def cmd_write_seed(a):
    path = seed_path(a.pool, a.uuid)
    data = sys.stdin.buffer.read(SEED_MAX + 1)
    if not data or len(data) > SEED_MAX:
        raise Refused("bad_seed", f"a seed image of 1 byte to {SEED_MAX} bytes on stdin")
    for d in (a.pool, CONSOLE_DIR):
        os.makedirs(d, mode=0o700, exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def cmd_delete_seed(a):
    path = seed_path(a.pool, a.uuid)
    for p in (path + ".tmp", path):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    return {"path": path, "deleted": True}


REPORT_MAGIC = b"VMSEAL-REPORT-V1"  # hooks/guest_audit.sh looks for it
REPORT_SIZE = 1 << 20
REPORT_LINE = re.compile(r"^vmseal-(guest|audit) [\x20-\x7e]{1,1000}$")


def make_report_disk(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(REPORT_MAGIC + b"\n")
        f.truncate(REPORT_SIZE)


def print_report(path):
    """Print what the guest wrote on the report disk: its vmseal-guest and vmseal-audit lines, printable
    ASCII only, at most 200. The guest's own word: shown and recorded, trusted for nothing."""
    try:
        with open(path, "rb") as f:
            data = f.read(REPORT_SIZE)
    except FileNotFoundError:
        return
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    if not data.startswith(REPORT_MAGIC + b"\n"):
        return
    text = data[len(REPORT_MAGIC) + 1:].split(b"\0", 1)[0].decode("ascii", "replace")
    lines = [ln for ln in text.splitlines() if REPORT_LINE.match(ln)][:200]
    if lines:
        print("vmseal: the guest's report:\n" + "\n".join(lines), flush=True)


def cmd_run(a):
    if a.report_disk:
        make_report_disk(a.report_disk)
    try:
        return _run(a)
    finally:
        if a.report_disk:
            print_report(a.report_disk)


def _run(a):
    for vol_id in a.writable:
        _data, meta_path = vol_paths(a.pool, vol_id)
        rules.check_writable(read_meta(meta_path))
    env = dict(os.environ)
    for kv in a.env:
        k, _, v = kv.partition("=")
        env[k] = v
    argv = a.argv[1:] if a.argv and a.argv[0] == "--" else a.argv
    if not argv:
        raise Refused("no_command", "run needs a command after --")
    # The command opens the job's log (secrets are never in an argv: they come in the job's files).
    print("$ " + " ".join(shlex.quote(x) for x in argv), flush=True)
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    full_since = None
    while True:
        try:
            rc = proc.wait(timeout=POOL_WATCH)
            return {"exit_code": rc, "_exit": rc}
        except subprocess.TimeoutExpired:
            pass
        if pool_free(a.pool) >= POOL_MIN_FREE:
            full_since = None
            continue
        full_since = full_since or time.monotonic()
        if time.monotonic() - full_since < POOL_FULL_GRACE:
            continue
        # qemu pauses a guest (virt-sysprep's appliance too) that hits ENOSPC, and waits: stop it.
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            signal_command(proc, sig)
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                pass
        message = (f"the template pool {a.pool} on this host is full (less than {POOL_MIN_FREE >> 10} KiB "
                   f"free for {POOL_FULL_GRACE:.0f} s): {os.path.basename(argv[0])} was stopped")
        print(f"vmseal: error: {message}", flush=True)
        return {"exit_code": proc.wait(), "error": "pool_full", "message": message, "_exit": 4}


POOL_WATCH = 2.0  # seconds between looks at the pool's free space while a command runs
POOL_MIN_FREE = 1 << 20  # less than this, for POOL_FULL_GRACE seconds in a row, is a full pool
POOL_FULL_GRACE = float(os.environ.get("VMSEAL_POOL_FULL_GRACE", "15"))


def pool_free(pool):
    """Bytes a root process can still write in ``pool`` (root may use the reserved blocks)."""
    try:
        st = os.statvfs(pool)
    except OSError:
        return POOL_MIN_FREE  # not ours to judge
    return st.f_bfree * st.f_frsize


def signal_command(proc, sig):
    """Signal the command and what it started (virt-sysprep's appliance): every process of this
    helper's process group but the helper, which lives on to report why. (Run by hand, outside a
    job's own session, only the command itself.)"""
    me, group = os.getpid(), os.getpgid(0)
    if group != me:
        proc.send_signal(sig)
        return
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                pgrp = int(f.read().rsplit(")", 1)[1].split()[2])
            if pgrp == group:
                os.kill(int(entry), sig)
        except (OSError, ValueError, IndexError):
            pass


# -- host jobs ------------------------------------------------------------------------------------------
JOBS_DIR = os.environ.get("VMSEAL_JOBS_DIR", "/var/lib/vmseal/jobs")
PUSH_LOG_MAX = 48 * 1024  # the app takes callback bodies up to 64 KiB
TERMINAL = ("done", "failed", "aborted")
# a spec's files: plain names, never the runner's own (spec.json, state.json, log)
JOB_FILE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\.(cmds|txt)$")


def job_dir(job_id):
    if not ID_RE.match(job_id):
        raise Refused("bad_job_id", f"not a job id: {job_id!r}")
    return os.path.join(JOBS_DIR, job_id)


def write_json(path, data, mode=0o600):
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_state(d):
    with open(os.path.join(d, "state.json")) as f:
        return json.load(f)


def update_state(d, **changes):
    st = read_state(d)
    st.update(changes)
    write_json(os.path.join(d, "state.json"), st)
    return st


def proc_start_time(pid):
    """The process's start time in clock ticks, to tell a live runner from a recycled pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def runner_alive(st):
    """The recorded runner still runs: same pid and start time (not a recycled pid), and not a zombie
    (a killed runner whose parent is gone stays one where PID 1 does not reap)."""
    pid = st.get("pid")
    return bool(pid) and proc_start_time(pid) == st.get("pid_start") and proc_state(pid) not in ("Z", "X", None)


def observed(d, log_offset=0):
    """The job's state as the app should see it; a runner gone without an exit record is failed."""
    st = read_state(d)
    if st["status"] not in TERMINAL and st.get("pid") and not runner_alive(st):
        st = update_state(d, status="failed", error="the job runner vanished without recording an exit",
                          ended=time.time())
    elif st["status"] == "pending" and time.time() - st.get("created", 0) > 30 and not st.get("pid"):
        st = update_state(d, status="failed", error="the job runner never started", ended=time.time())
    out = dict(st)
    log_path = os.path.join(d, "log")
    try:
        with open(log_path, "rb") as f:
            f.seek(log_offset)
            chunk = f.read(256 * 1024)
        out["log"] = chunk.decode("utf-8", "replace")
        out["log_offset"] = log_offset + len(chunk)
    except FileNotFoundError:
        out["log"], out["log_offset"] = "", log_offset
    return out


def cmd_job_start(a):
    d = job_dir(a.id)
    spec = json.load(sys.stdin)
    if not isinstance(spec.get("args"), list) or not spec["args"]:
        raise Refused("bad_spec", "job-start needs args")
    os.makedirs(JOBS_DIR, mode=0o700, exist_ok=True)
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        return observed(d)  # started before (a retried request, a resumed flow): never run it twice
    files = spec.get("files") or {}
    if not isinstance(files, dict) or not all(isinstance(n, str) and JOB_FILE_RE.match(n) and isinstance(t, str)
                                              for n, t in files.items()):
        os.rmdir(d)
        raise Refused("bad_spec", "job-start: files must be {name: text} with plain file names")
    for name, text in files.items():  # before the spec and state: a job that exists has them
        fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    write_json(os.path.join(d, "spec.json"), spec, mode=0o600)  # holds the callback secret
    write_json(os.path.join(d, "state.json"), {"id": a.id, "status": "pending", "progress": 0,
                                                "created": time.time()})
    os.close(os.open(os.path.join(d, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600))
    # Detach: a new session, no inherited fds, so the SSH command returns at once.
    subprocess.Popen([sys.executable, os.path.abspath(__file__), "job-exec", "--id", a.id],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True, cwd="/")
    for _ in range(100):  # wait (briefly) until the runner recorded its pid
        st = read_state(d)
        if st.get("pid"):
            break
        time.sleep(0.01)
    return observed(d)


def cmd_job_exec(a):
    d = job_dir(a.id)
    with open(os.path.join(d, "spec.json")) as f:
        spec = json.load(f)
    me = os.getpid()
    update_state(d, status="running", pid=me, pid_start=proc_start_time(me), pgid=os.getpgid(0),
                 started=time.time())
    with open(os.path.join(d, "log"), "ab", buffering=0) as log:
        child = subprocess.Popen([sys.executable, os.path.abspath(__file__), *spec["args"]],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 start_new_session=True, cwd=d)
        update_state(d, child_pid=child.pid)
        last = b""
        for line in child.stdout:
            log.write(line)
            if line.strip():
                last = line
        rc = child.wait()
    for name in spec.get("files") or {}:
        try:
            os.unlink(os.path.join(d, name))
        except FileNotFoundError:
            pass
    result = None
    try:
        parsed = json.loads(last.decode("utf-8", "replace"))
        result = parsed if isinstance(parsed, dict) else None
    except ValueError:
        pass
    st = read_state(d)
    if st["status"] == "aborting":
        status, error = "aborted", "aborted on request"
    elif rc == 0:
        status, error = "done", ""
    else:
        status = "failed"
        code = (result or {}).get("exit_code", rc)
        error = (result or {}).get("message") or (f"killed by signal {-code}" if isinstance(code, int) and code < 0
                                                  else f"exit status {code}")
    st = update_state(d, status=status, exit_code=rc, result=result, error=error, ended=time.time(), progress=100
                      if status == "done" else st.get("progress", 0))
    payload = {"kind": "job", "job": a.id, "host": spec.get("host"), "status": status, "exit_code": rc,
               "error": error, "result": result}
    # A done job with a short log pushes its whole log: once the app has taken it (2xx), nothing is left
    # to fetch, and the job's directory goes at once (no poll for the tail, no clear round trip).
    log_path = os.path.join(d, "log")
    complete = status == "done" and os.path.getsize(log_path) <= PUSH_LOG_MAX
    if complete:
        with open(log_path, "rb") as f:
            data = f.read()
        payload.update(log=data.decode("utf-8", "replace"), log_offset=len(data), log_complete=True)
    if notify(spec, payload) and complete:
        remove_job_dir(d)
    return {"_exit": 0, "status": status}


def sign(secret, body, ts, nonce):
    return hmac.new(secret.encode(), f"{ts}.{nonce}.".encode() + body, hashlib.sha256).hexdigest()


def notify(spec, payload, attempts=3, timeout=2.0):
    """POST the signed payload to the app; short timeout, a few tries, never raises."""
    url, secret = spec.get("callback_url"), spec.get("secret")
    if not url or not secret:
        return False
    body = json.dumps(payload, sort_keys=True).encode()
    for attempt in range(attempts):
        ts, nonce = str(int(time.time())), uuid.uuid4().hex
        req = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "X-Vmseal-Timestamp": ts, "X-Vmseal-Nonce": nonce,
            "X-Vmseal-Signature": sign(secret, body, ts, nonce)})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                if 200 <= resp.status < 300:
                    return True
        except Exception:  # noqa: BLE001 - the poller is the fallback
            pass
        time.sleep(0.2 * (attempt + 1))
    return False


def cmd_job_status(a):
    d = job_dir(a.id)
    if not os.path.isfile(os.path.join(d, "state.json")):
        raise Refused("no_such_job", f"this host has no job {a.id}")
    return observed(d, a.log_offset)


def cmd_job_abort(a):
    d = job_dir(a.id)
    if not os.path.isfile(os.path.join(d, "state.json")):
        raise Refused("no_such_job", f"this host has no job {a.id} (ended and cleared, or never started)")
    st = observed(d)
    if st["status"] in TERMINAL:
        raise Refused("job_terminal", f"job {a.id} is {st['status']}: it cannot be aborted")
    if st["status"] == "pending" and not st.get("pid"):
        return update_state(d, status="aborted", error="aborted before start", ended=time.time())
    update_state(d, status="aborting")
    # The work runs in its own session (pgid == child_pid), so signalling that group stops it and
    # everything it started (virt-sysprep's appliance included) while the runner lives on to record it.
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 3.0)):
        child = read_state(d).get("child_pid")
        if child:
            try:
                os.killpg(child, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.time() + wait
        while time.time() < deadline and observed(d)["status"] not in TERMINAL:
            time.sleep(0.05)
        if observed(d)["status"] in TERMINAL:
            break
    return observed(d)


def remove_job_dir(d):
    """Remove a job's directory; tolerant of a concurrent removal (the runner's own and a job-clear)."""
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(d, name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(d)
    except FileNotFoundError:
        pass


def cmd_job_clear(a):
    d = job_dir(a.id)
    if not os.path.isdir(d):
        return {"id": a.id, "cleared": False}
    if observed(d)["status"] not in TERMINAL:
        raise Refused("job_running", f"job {a.id} is not terminal: it cannot be cleared")
    remove_job_dir(d)
    return {"id": a.id, "cleared": True}


def cmd_sysprep_operations(a):
    out = subprocess.run(["virt-sysprep", "--list-operations"], capture_output=True, text=True, check=True).stdout
    ops = {}
    for line in out.splitlines():
        parts = line.split(None, 2)
        if parts:
            ops[parts[0]] = len(parts) > 1 and parts[1] == "*"
    return {"operations": ops}


def cmd_host_info(a):
    """What host_check reports: versions, KVM, free space in the pool, the appliance cache."""
    def out(*argv):
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr).strip() else ""
        except (OSError, subprocess.TimeoutExpired):
            return None
    probe = a.pool
    while probe != "/" and not os.path.isdir(probe):
        probe = os.path.dirname(probe)
    st = os.statvfs(probe)
    cache = f"/var/tmp/.guestfs-{os.getuid()}/appliance.d"
    return {
        "hostname": os.uname().nodename,
        "libvirtd": out("libvirtd", "--version"),
        "qemu_img": out("qemu-img", "--version"),
        "virt_sysprep": out("virt-sysprep", "--version"),
        "guestfs_python": os.path.exists("/usr/lib/python3/dist-packages/guestfs.py"),
        "kvm": os.access("/dev/kvm", os.R_OK | os.W_OK),
        "pool_path": a.pool,
        "pool_exists": os.path.isdir(a.pool),
        "pool_free_bytes": st.f_bavail * st.f_frsize,
        "appliance_cached": os.path.isdir(cache) and bool(os.listdir(cache)),
        "hooks_installed": all(os.path.exists(f"/etc/libvirt/hooks/{h}") for h in ("qemu", "daemon")),
        "jobs": len(os.listdir(JOBS_DIR)) if os.path.isdir(JOBS_DIR) else 0,
    }


def parser():
    """The verbs and their arguments (the usage at the top of this file)."""
    p = argparse.ArgumentParser(prog="vmseal_host")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create-volume")
    c.add_argument("--pool", required=True)
    c.add_argument("--id", required=True)
    c.add_argument("--source")
    c.add_argument("--source-format", choices=["raw", "qcow2"])
    c.add_argument("--parent")
    c.add_argument("--parent-pool")
    c.add_argument("--rate-limit", type=int, default=0)
    u = sub.add_parser("update-volume")
    u.add_argument("--pool", required=True)
    u.add_argument("--id", required=True)
    u.add_argument("--generation", type=int, required=True)
    u.add_argument("--legality", choices=rules.LEGALITIES)
    u.add_argument("--type", choices=rules.TYPES)
    for name in ("delete-volume", "volume-info"):
        d = sub.add_parser(name)
        d.add_argument("--pool", required=True)
        d.add_argument("--id", required=True)
    sub.add_parser("pool-scan").add_argument("--pool", required=True)
    for name in ("write-seed", "delete-seed"):
        w = sub.add_parser(name)
        w.add_argument("--pool", required=True)
        w.add_argument("--uuid", required=True)
    r = sub.add_parser("run")
    r.add_argument("--pool", default="/")
    r.add_argument("--writable", action="append", default=[])
    r.add_argument("--env", action="append", default=[])
    r.add_argument("--report-disk")
    r.add_argument("argv", nargs=argparse.REMAINDER)
    sub.add_parser("sysprep-operations")
    hi = sub.add_parser("host-info")
    hi.add_argument("--pool", required=True)
    for name in ("job-start", "job-exec", "job-abort", "job-clear", "job-status"):
        j = sub.add_parser(name)
        j.add_argument("--id", required=True)
        if name == "job-status":
            j.add_argument("--log-offset", type=int, default=0)
    return p


HANDLERS = {"create-volume": cmd_create, "update-volume": cmd_update, "delete-volume": cmd_delete,
            "volume-info": cmd_info, "run": cmd_run, "job-start": cmd_job_start, "job-exec": cmd_job_exec,
            "job-status": cmd_job_status, "job-abort": cmd_job_abort, "job-clear": cmd_job_clear,
            "host-info": cmd_host_info, "sysprep-operations": cmd_sysprep_operations, "pool-scan": cmd_pool_scan,
            "write-seed": cmd_write_seed, "delete-seed": cmd_delete_seed}


def main(argv=None):
    a = parser().parse_args(argv)
    os.umask(0o077)  # what this helper and the commands it runs create is root's alone
    handler = HANDLERS[a.cmd]
    try:
        result = handler(a)
    except (Refused, rules.RuleError) as e:
        print(json.dumps({"error": getattr(e, "code", "refused"), "message": str(e)}))
        return 3
    except Exception as e:  # noqa: BLE001 - the app gets the message, the exit code says failure
        print(json.dumps({"error": "failed", "message": f"{type(e).__name__}: {e}"}))
        return 1
    code = result.pop("_exit", 0)
    print(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main())
