"""Reading a guest's files on a host's disks, inside libguestfs (tests/guestprobe.py)."""

import json

from tests.utils.paths import ROOT


def probe(host, disks: list[str], files: list[str], dirs: list[str]) -> dict:
    """Read files from disks on the host, in one read-only libguestfs launch."""
    req = json.dumps({"disks": disks, "files": files, "dirs": dirs})
    proc = host.exec("env", "LIBGUESTFS_BACKEND=direct", "LIBGUESTFS_BACKEND_SETTINGS=force_tcg",
                     "/usr/bin/python3", str(ROOT / "tests" / "guestprobe.py"), input=req, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)
