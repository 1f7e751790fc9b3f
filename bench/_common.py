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
