"""The host helper's pool verbs (hooks/vmseal_host.py), run for real on this machine against a temporary
pool and lock directory, as tests/test_host_runner.py runs the job runner: metadata writers serialise on
the pool's lock, and pool-scan lists without following a symlink or opening what is not a volume's."""

import fcntl
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def host(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "vmseal_host.py").write_text((ROOT / "hooks" / "vmseal_host.py").read_text())
    (lib / "vmseal_rules.py").write_text((ROOT / "volumes" / "rules.py").read_text())
    pool, locks = tmp_path / "pool", tmp_path / "locks"
    env = {**os.environ, "VMSEAL_LOCK_DIR": str(locks), "VMSEAL_JOBS_DIR": str(tmp_path / "jobs")}
    argv = [sys.executable, str(lib / "vmseal_host.py")]

    def call(*args):
        p = subprocess.run([*argv, *args], capture_output=True, text=True, env=env, timeout=30)
        return p.returncode, json.loads(p.stdout.strip().splitlines()[-1])

    def spawn(*args):
        return subprocess.Popen([*argv, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def make_volume():
        src = tmp_path / "src.raw"
        if not src.exists():
            with open(src, "wb") as f:
                f.truncate(1 << 20)
        vol = str(uuid.uuid4())
        rc, out = call("create-volume", "--pool", str(pool), "--id", vol, "--source", str(src),
                       "--source-format", "raw")
        assert rc == 0, out
        return vol

    return call, spawn, make_volume, pool, locks


def test_concurrent_updates_of_one_volume_wait_for_the_pool_lock_and_serialise(host):
    call, spawn, make_volume, pool, locks = host
    vol = make_volume()
    (lock_file,) = locks.iterdir()
    fd = os.open(lock_file, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a writer on the host would hold it
        procs = [spawn("update-volume", "--pool", str(pool), "--id", vol, "--generation", "0", "--legality", "ILLEGAL")
                 for _ in range(2)]
        time.sleep(1.5)
        assert [p.poll() for p in procs] == [None, None], "an update went ahead while another writer held the lock"
    finally:
        os.close(fd)
    outs = [(p.wait(timeout=30), json.loads(p.communicate()[0].strip().splitlines()[-1])) for p in procs]
    assert sorted(rc for rc, _ in outs) == [0, 3], outs
    refused = next(out for rc, out in outs if rc == 3)
    assert refused["error"] == "stale_generation", "the second saw the first's write, not the generation both read"
    meta = json.loads((pool / f"{vol}.meta").read_text())
    assert (meta["legality"], meta["generation"]) == ("ILLEGAL", 1)


def test_the_lock_file_is_private(host):
    _call, _spawn, make_volume, _pool, locks = host
    make_volume()
    (lock_file,) = locks.iterdir()
    assert oct(locks.stat().st_mode & 0o777) == "0o700"
    assert oct(lock_file.stat().st_mode & 0o777) == "0o600"


def test_pool_scan_lists_every_file_and_never_follows_or_opens_what_is_not_a_volume(host, tmp_path):
    call, _spawn, make_volume, pool, _locks = host
    ok, gone_data, bad_meta = make_volume(), make_volume(), make_volume()
    (pool / f"{gone_data}.qcow2").unlink()
    (pool / f"{bad_meta}.meta").write_text(json.dumps({"id": bad_meta, "type": "LEAF", "legality": "MAYBE",
                                                       "generation": 0, "parent": None, "format": "qcow2"}))
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"id": "x", "marker": "SECRET-OUTSIDE-THE-POOL"}))
    linked = str(uuid.uuid4())
    os.symlink(secret, pool / f"{linked}.meta")  # a volume's name, but a symlink: listed, never followed
    os.symlink(secret, pool / f"{linked}.qcow2")
    fifo = f"{uuid.uuid4()}.meta"
    os.mkfifo(pool / fifo)  # opening it would block the scan
    (pool / "notes.txt").write_text("UNKNOWN-CONTENT")
    (pool / "sub").mkdir()

    start = time.monotonic()
    rc, out = call("pool-scan", "--pool", str(pool))
    assert rc == 0, out
    assert time.monotonic() - start < 10
    text = json.dumps(out)
    assert "SECRET-OUTSIDE-THE-POOL" not in text
    assert "UNKNOWN-CONTENT" not in text
    assert {f["name"] for f in out["files"]} == {p.name for p in pool.iterdir()}
    vols = {v["id"]: v for v in out["volumes"]}
    assert set(vols) == {ok, gone_data, bad_meta}
    assert (vols[ok]["data"], vols[ok]["meta"]["legality"], vols[ok]["meta_error"]) == (True, "LEGAL", None)
    assert vols[ok]["size"] > 0
    assert vols[ok]["mode"].startswith("0o")
    assert (vols[gone_data]["data"], vols[gone_data]["meta"]["id"]) == (False, gone_data)
    assert vols[bad_meta]["meta"] is None
    assert "MAYBE" in vols[bad_meta]["meta_error"]
    unknown = {u["name"]: u["kind"] for u in out["unknown"]}
    assert unknown == {f"{linked}.meta": "symlink", f"{linked}.qcow2": "symlink", "notes.txt": "file", "sub": "dir",
                       fifo: "other"}


def test_delete_volume_removes_a_volume_whose_metadata_is_unreadable(host):
    call, _spawn, make_volume, pool, _locks = host
    vol = make_volume()
    (pool / f"{vol}.meta").write_text("{not json")
    rc, out = call("delete-volume", "--pool", str(pool), "--id", vol)
    assert rc == 0, out
    assert not list(pool.glob(f"{vol}*"))
