"""What the benchmarks share: test hosts of their own that trust the app's key, a free port, waiting
for a server, and failing loudly.

Every bench takes ``--quick`` (small counts, one run, a short duration: the same code path end to end, in
CI through scripts/bench-quick) and prints its ``key=value`` line last; a broken bench exits non-zero
through fail().
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTHOSTS = [sys.executable, str(ROOT / "scripts" / "testhosts.py")]


class BenchFailed(SystemExit):
    """The bench broke (not a slow figure): a job not done, a push that never came, no samples."""


def fail(message: str) -> None:
    raise BenchFailed(f"{Path(sys.argv[0]).name}: FAILED: {message}")


def host_name(tag: str) -> str:
    """A test host name of this bench run: vmseal-b<pid><tag> (tag: a few lowercase letters/digits), so
    two bench runs on one machine (or a bench and the test sessions' vmseal-e<pid>) never share one."""
    return f"vmseal-b{os.getpid()}{tag}"


def remove_orphaned_hosts() -> None:
    """Remove bench hosts whose bench process is gone (killed before its clean-up ran)."""
    names = subprocess.run([*TESTHOSTS, "list"], capture_output=True, text=True).stdout.split()
    for name in names:
        m = re.fullmatch(r"vmseal-b(\d+)[a-z0-9]*", name)
        if m and int(m.group(1)) != os.getpid() and not Path(f"/proc/{m.group(1)}").exists():
            remove_host(name)


def fresh_host(name: str) -> dict:
    """Remove any leftover host of that name (and orphaned bench hosts), make it anew, authorise the
    app's SSH key; its info."""
    from hostjobs.transport import app_public_key

    remove_orphaned_hosts()
    subprocess.run([*TESTHOSTS, "down", name], capture_output=True)
    info = json.loads(subprocess.run([*TESTHOSTS, "up", name], check=True, capture_output=True, text=True).stdout)
    with open(info["authorized_keys"], "a") as f:
        f.write(app_public_key() + "\n")
    return info


def remove_host(name: str) -> None:
    subprocess.run([*TESTHOSTS, "down", name], capture_output=True)


def check_port_free(address: str, port: int) -> None:
    """Fail unless ``address:port`` is free: a server already there (another bench run) would answer in
    place of ours."""
    with socket.socket() as s:
        # SO_REUSEADDR as the servers set it: a connection of an earlier run left in TIME_WAIT on the port
        # (the server closed it) does not count, a server listening there does
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as e:
            fail(f"{address}:{port} is taken ({e.strerror}): another bench run on this machine?")


def wait_http(url: str, timeout: float = 30) -> None:
    """Until the server at ``url`` answers (any HTTP status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer in {timeout}s")


def start_process(argv: list[str], env: dict | None = None, log: str | None = None) -> subprocess.Popen:
    """A service process in its own process group (stop() ends the group)."""
    out = open(ROOT / "var" / log, "a") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the process
    return subprocess.Popen(argv, cwd=ROOT, env=env or os.environ.copy(), start_new_session=True,
                            stdout=out, stderr=subprocess.STDOUT)


def gunicorn(bind: str, workers: int = 2, threads: int = 4, env: dict | None = None, log: str | None = None):
    """vmseal's WSGI app under gunicorn, as README "Deploying" runs it."""
    return start_process([str(Path(sys.executable).parent / "gunicorn"), "vmseal.wsgi:application", "--bind", bind,
                          "--workers", str(workers), "--threads", str(threads), "--worker-class", "gthread",
                          "--access-logfile", "-" if log else "/dev/null"], env, log)


def qcluster(env: dict | None = None, log: str | None = None):
    return start_process([sys.executable, str(ROOT / "manage.py"), "qcluster"], env, log)


def stop(proc: subprocess.Popen | None, timeout: float = 20) -> None:
    import signal

    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
