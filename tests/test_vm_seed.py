"""vms.seed's pure logic: a VM's NoCloud seed ISO (read back with pycdlib, as Linux would see it through
Rock Ridge or Joliet) and the YAML in it, which hostile values cannot add keys to."""

import io
import shutil
import subprocess

import pycdlib
import pytest
import yaml

from vms.seed import SeedError, build_seed, meta_data, seed_files, user_data

ID = "0e7c1a52-4c2b-4d55-9a3e-5f8d7b6c4a21"
KEYS = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNvbWVrZXlzb21la2V5c29tZWtleXNvbWVrZXk= alice@laptop",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ== bob"]
HASH = "$6$rounds=4096$saltsalt$Hq0bJ3ZQvT9n3d2a1s9K8oW6xZyQ4bR7tL0mC5eP2uV1wN3kD8fG7hJ6jS4aQ2zX1cV0bN9mM8lK7"
PATHS = ["meta-data", "user-data", "vmseal/hostname", "vmseal/authorized_keys", "vmseal/instance-id",
         "vmseal/root_password_hash"]


def _read_iso(data: bytes, kind: str) -> dict[str, bytes]:
    """Every file of the image by its Rock Ridge or Joliet path."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        files = {}
        for top, _dirs, names in iso.walk(**{f"{kind}_path": "/"}):
            for name in names:
                path = f"{top.rstrip('/')}/{name}"
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, **{f"{kind}_path": path})
                files[path.lstrip("/")] = out.getvalue()
        return files
    finally:
        iso.close()


@pytest.fixture(scope="module")
def seed():
    return build_seed(instance_id=ID, hostname="web-1", ssh_authorized_keys=KEYS, root_password_hash=HASH)


@pytest.mark.parametrize("kind", ["rr", "joliet"])
def test_seed_holds_the_files_under_their_names(seed, kind):
    files = _read_iso(seed, kind)
    assert sorted(files) == sorted(PATHS)
    assert files["meta-data"] == f'instance-id: "{ID}"\nlocal-hostname: "web-1"\n'.encode()
    assert files["vmseal/hostname"] == b"web-1\n"
    assert files["vmseal/instance-id"] == ID.encode() + b"\n"
    assert files["vmseal/authorized_keys"] == ("\n".join(KEYS) + "\n").encode()
    assert files["vmseal/root_password_hash"] == HASH.encode() + b"\n"
    assert files == seed_files(instance_id=ID, hostname="web-1", ssh_authorized_keys=KEYS, root_password_hash=HASH)


def test_seed_is_labelled_cidata(seed, tmp_path):
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(seed))
    try:
        assert iso.pvd.volume_identifier.rstrip(b" ") == b"cidata"
        assert iso.has_rock_ridge()
        assert iso.has_joliet()
        assert iso.joliet_vd.volume_identifier.decode("utf-16-be").rstrip(" ") == "cidata"
    finally:
        iso.close()
    if shutil.which("blkid") is None:
        pytest.skip("blkid (util-linux) is not installed")
    path = tmp_path / "seed.iso"
    path.write_bytes(seed)
    out = subprocess.run(["blkid", "-p", "-o", "export", str(path)], capture_output=True, text=True).stdout
    fields = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert (fields.get("TYPE"), fields.get("LABEL")) == ("iso9660", "cidata"), out


def test_user_data_is_the_cloud_config_asked_for(seed):
    text = _read_iso(seed, "rr")["user-data"].decode()
    assert text.startswith("#cloud-config\n")
    assert yaml.safe_load(text) == {
        "hostname": "web-1",
        "preserve_hostname": False,
        "disable_root": False,
        "ssh_authorized_keys": KEYS,
        "chpasswd": {"expire": False, "users": [{"name": "root", "password": HASH, "type": "HASH"}]},
    }
    assert yaml.safe_load(_read_iso(seed, "rr")["meta-data"]) == {"instance-id": ID, "local-hostname": "web-1"}


def test_without_hash_or_keys():
    data = build_seed(instance_id=ID, hostname="db", ssh_authorized_keys=[])
    files = _read_iso(data, "rr")
    assert sorted(files) == sorted(p for p in PATHS if p != "vmseal/root_password_hash")
    assert files["vmseal/authorized_keys"] == b""
    assert yaml.safe_load(files["user-data"]) == {"hostname": "db", "preserve_hostname": False,
                                                   "disable_root": False, "ssh_authorized_keys": []}


@pytest.mark.security
@pytest.mark.parametrize("value", [
    'x", "disable_root": true, "runcmd": [["sh", "-c", "id"]], "y": "',
    "x\"\nruncmd: [id]",  # refused below (a newline); kept here for the YAML check of the others
    "yes", "123", "null", "~", "- item", "#comment", "key: value", "*alias", "&anchor x", "!!python/object:os.system",
    "{a: 1}", "[1, 2]", "x' y\\\" z\\", "\\u0022, \"runcmd\": 1", "héllo wörld ✓",
])
def test_hostile_values_stay_values(value):
    """A hostname or SSH key comment can hold YAML syntax; emitted as JSON strings they stay one string."""
    if "\n" in value:
        with pytest.raises(SeedError):
            seed_files(instance_id=ID, hostname=value, ssh_authorized_keys=[])
        return
    key = f"ssh-ed25519 AAAA {value}"
    ud = yaml.safe_load(user_data(hostname=value, ssh_authorized_keys=[key, value], root_password_hash=value))
    assert sorted(ud) == ["chpasswd", "disable_root", "hostname", "preserve_hostname", "ssh_authorized_keys"]
    assert ud["hostname"] == value
    assert ud["ssh_authorized_keys"] == [key, value]
    assert ud["disable_root"] is False
    assert ud["chpasswd"] == {"expire": False, "users": [{"name": "root", "password": value, "type": "HASH"}]}
    assert yaml.safe_load(meta_data(instance_id=value, hostname=value)) == {"instance-id": value,
                                                                            "local-hostname": value}


@pytest.mark.security
@pytest.mark.parametrize(("field", "value"), [
    ("hostname", "a\nb"), ("hostname", "a\rb"), ("hostname", ""), ("hostname", "a\x00b"), ("hostname", "a\u2028b"),
    ("hostname", "a\x85b"), ("instance_id", "i\nj"), ("instance_id", ""), ("ssh_authorized_keys", ["k1\nk2"]),
    ("ssh_authorized_keys", [""]), ("ssh_authorized_keys", "ssh-ed25519 AAAA as a string"),
    ("root_password_hash", "$6$a$b\nroot2"), ("root_password_hash", "$6$a:b"),
])
def test_values_that_would_break_a_line_are_refused(field, value):
    args = {"instance_id": ID, "hostname": "h", "ssh_authorized_keys": KEYS, "root_password_hash": HASH}
    with pytest.raises(SeedError, match=field):
        build_seed(**(args | {field: value}))
