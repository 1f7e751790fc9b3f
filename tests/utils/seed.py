"""A NoCloud seed (ISO 9660, volume label ``cidata``) for the boot tests, with the layout of the contract
in vms/seed.py (``build_seed``): ``meta-data``, ``user-data`` (#cloud-config) and the ``vmseal/`` files
the first-boot agent reads in guests without cloud-init. When the app's own ``vms.seed`` is there, it is
used; until then this builds the same layout with genisoimage (scripts/install-system-packages.sh)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path


def _genisoimage_seed(*, instance_id: str, hostname: str, ssh_authorized_keys: list[str],
                      root_password_hash: str = "") -> bytes:
    for v in (instance_id, hostname, root_password_hash, *ssh_authorized_keys):
        if "\n" in v or "\r" in v:
            raise ValueError("a seed value holds a line break")
    user_data = ["#cloud-config", "preserve_hostname: false", f"hostname: {json.dumps(hostname)}",
                 "disable_root: false", "ssh_authorized_keys:"]
    user_data += [f"  - {json.dumps(k)}" for k in ssh_authorized_keys]
    if root_password_hash:
        user_data += ["chpasswd:", "  expire: false", "  users:",
                      f"    - {{name: root, password: {json.dumps(root_password_hash)}, type: HASH}}"]
    files = {
        "meta-data": f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n",
        "user-data": "\n".join(user_data) + "\n",
        "vmseal/instance-id": instance_id + "\n",
        "vmseal/hostname": hostname + "\n",
        "vmseal/authorized_keys": "".join(k + "\n" for k in ssh_authorized_keys),
    }
    if root_password_hash:
        files["vmseal/root_password_hash"] = root_password_hash + "\n"
    with tempfile.TemporaryDirectory(prefix="vmseal-seed-") as tmp:
        src = Path(tmp) / "src"
        for name, text in files.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_text(text)
        out = Path(tmp) / "seed.iso"
        subprocess.run(["genisoimage", "-quiet", "-V", "cidata", "-J", "-r", "-o", str(out), str(src)],
                       check=True, capture_output=True)
        return out.read_bytes()


try:
    from vms.seed import build_seed  # noqa: F401  (the app's own, when the vms app is there)
except ImportError:
    build_seed = _genisoimage_seed
