"""What the benchmarks share: a fresh test host that trusts the app's key, and waiting for a server."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTHOSTS = [sys.executable, str(ROOT / "scripts" / "testhosts.py")]


def fresh_host(name: str) -> dict:
    """Remove any leftover host of that name, make it anew, authorise the app's SSH key; its info."""
    from hostjobs.transport import app_public_key

    subprocess.run([*TESTHOSTS, "down", name], capture_output=True)
    info = json.loads(subprocess.run([*TESTHOSTS, "up", name], check=True, capture_output=True, text=True).stdout)
    with open(info["authorized_keys"], "a") as f:
        f.write(app_public_key() + "\n")
    return info


def remove_host(name: str) -> None:
    subprocess.run([*TESTHOSTS, "down", name], capture_output=True)


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
    import os

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
    import os
    import signal

    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
