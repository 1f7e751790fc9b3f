"""A VM's NoCloud seed: an ISO 9660 image (Joliet + Rock Ridge) labelled ``cidata``, attached as a CD-ROM.

cloud-init's NoCloud datasource reads ``meta-data`` and ``user-data`` from it; guests without cloud-init
read ``vmseal/*`` (one value per file) with vmseal's first-boot agent. Pure: builds bytes, writes nothing.

Both YAML files are written with every value as a JSON string (YAML is a superset of JSON), so a value
can never end its scalar and start a key of its own. Values reach here validated by the Vm model; this
module still refuses the characters that would break a one-line value (newlines, control characters and
YAML's other line breaks).
"""

from __future__ import annotations

import io
import json
import re

import pycdlib

VOLUME_LABEL = "cidata"
# C0/C1 controls (newline among them), DEL, YAML's other line breaks (NEL, LS, PS), and what UTF-8 or
# YAML cannot carry (lone surrogates, U+FFFE/U+FFFF).
_NOT_ONE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")
_FILE_MODE = 0o100400  # Rock Ridge modes: readable by the guest's root only (user-data holds the hash)
_DIR_MODE = 0o040500


class SeedError(ValueError):
    """A value that cannot go into the seed."""


def _one_line(what: str, value: str, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty_ok) or _NOT_ONE_LINE.search(value):
        raise SeedError(f"{what}: must be a{'' if empty_ok else ' non-empty'} single-line string "
                        "without control characters")
    return value


def _q(value) -> str:
    """A value as a JSON scalar/flow collection: valid YAML that means exactly this value."""
    return json.dumps(value, ensure_ascii=False)


def meta_data(*, instance_id: str, hostname: str) -> str:
    return f"instance-id: {_q(instance_id)}\nlocal-hostname: {_q(hostname)}\n"


def user_data(*, hostname: str, ssh_authorized_keys: list[str], root_password_hash: str = "") -> str:
    lines = [
        "#cloud-config",
        f"hostname: {_q(hostname)}",
        "preserve_hostname: false",
        "disable_root: false",
        f"ssh_authorized_keys: {_q(list(ssh_authorized_keys))}",
    ]
    if root_password_hash:
        users = [{"name": "root", "password": root_password_hash, "type": "HASH"}]
        lines.append(f"chpasswd: {_q({'expire': False, 'users': users})}")
    return "\n".join(lines) + "\n"


def seed_files(*, instance_id: str, hostname: str, ssh_authorized_keys: list[str],
               root_password_hash: str = "") -> dict[str, bytes]:
    """The seed's files, by path (``/``-separated, relative to the image's root), validated."""
    _one_line("instance_id", instance_id)
    _one_line("hostname", hostname)
    if isinstance(ssh_authorized_keys, str):
        raise SeedError("ssh_authorized_keys: a list of keys, not a string")
    keys = [_one_line("ssh_authorized_keys", k) for k in ssh_authorized_keys]
    _one_line("root_password_hash", root_password_hash, empty_ok=True)
    if ":" in root_password_hash:  # crypt(3) hashes never hold one; it would split a shadow/chpasswd line
        raise SeedError("root_password_hash: a crypt(3) hash has no ':'")
    files = {
        "meta-data": meta_data(instance_id=instance_id, hostname=hostname),
        "user-data": user_data(hostname=hostname, ssh_authorized_keys=keys, root_password_hash=root_password_hash),
        "vmseal/hostname": hostname + "\n",
        "vmseal/authorized_keys": "".join(k + "\n" for k in keys),
        "vmseal/instance-id": instance_id + "\n",
    }
    if root_password_hash:
        files["vmseal/root_password_hash"] = root_password_hash + "\n"
    return {path: text.encode() for path, text in files.items()}


# ISO 9660 level 1 names (8.3, upper case) for readers that see neither Joliet nor Rock Ridge.
_ISO_NAMES = {
    "meta-data": "/METADATA.;1",
    "user-data": "/USERDATA.;1",
    "vmseal": "/VMSEAL",
    "vmseal/hostname": "/VMSEAL/HOSTNAME.;1",
    "vmseal/authorized_keys": "/VMSEAL/AUTHKEYS.;1",
    "vmseal/root_password_hash": "/VMSEAL/ROOTPWH.;1",
    "vmseal/instance-id": "/VMSEAL/INSTID.;1",
}


def build_seed(*, instance_id: str, hostname: str, ssh_authorized_keys: list[str],
               root_password_hash: str = "") -> bytes:
    """The seed ISO's bytes: Joliet + Rock Ridge names as in seed_files(), volume label ``cidata``."""
    files = seed_files(instance_id=instance_id, hostname=hostname, ssh_authorized_keys=ssh_authorized_keys,
                       root_password_hash=root_password_hash)
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, vol_ident=VOLUME_LABEL, joliet=3, rock_ridge="1.09")
    try:
        iso.add_directory(_ISO_NAMES["vmseal"], rr_name="vmseal", joliet_path="/vmseal", file_mode=_DIR_MODE)
        for path, data in files.items():
            iso.add_fp(io.BytesIO(data), len(data), _ISO_NAMES[path], rr_name=path.rsplit("/", 1)[-1],
                       joliet_path="/" + path, file_mode=_FILE_MODE)
        out = io.BytesIO()
        iso.write_fp(out)
    finally:
        iso.close()
    return out.getvalue()
