"""Secrets on the app side are readable only by the user vmseal runs as: what vmseal makes under its
data directory is 0700/0600 whatever the umask, a directory it would use that another user owns or
can write to is refused, and a local user who prepares an SSH control socket directory receives no
command (issue 11, section 2)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK"

# In a fresh data dir: migrate (the database, its -wal/-shm, the secret key), the app's SSH key, one
# host's SSH files, then the test database; the tree is listed while the connections are open (the
# -wal/-shm files go when the last connection closes).
MAKE_EVERYTHING = f"""
import json, os, stat, sys
import django
django.setup()
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from hostjobs import transport

def listing():
    out = {{}}
    for d, dirs, files in os.walk(settings.DATA_DIR):
        for name in [""] + dirs + files:
            p = os.path.join(d, name) if name else d
            st = os.lstat(p)
            out[os.path.relpath(p, settings.DATA_DIR)] = [stat.filemode(st.st_mode), st.st_uid]
    return out

call_command("migrate", verbosity=0)
transport.app_key()
transport.SSHTarget(1, "10.211.0.250", 22, "root", {KEY!r}).materialize()
with connection.cursor() as c:
    c.execute("SELECT count(*) FROM django_migrations")
seen = listing()
connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
with connection.cursor() as c:
    c.execute("SELECT count(*) FROM django_migrations")
seen.update(listing())
print(json.dumps(seen))
"""


def app_env(data: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMSEAL_")}
    return {**env, "VMSEAL_DATA_DIR": str(data), "DJANGO_SETTINGS_MODULE": "vmseal.settings",
            "VMSEAL_TEST_DB_NAME": str(data / "test-private.sqlite3"), **extra}


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_everything_vmseal_makes_in_a_fresh_data_dir_is_private(tmp_path, umask):
    data = tmp_path / "data"
    proc = subprocess.run([sys.executable, "-c", MAKE_EVERYTHING], cwd=ROOT, env=app_env(data), umask=umask,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = {".", "ssh", "ssh/id_ed25519", "ssh/id_ed25519.pub", "secret_key",
                "vmseal.sqlite3", "vmseal.sqlite3-wal", "vmseal.sqlite3-shm",
                "test-private.sqlite3", "test-private.sqlite3-wal", "test-private.sqlite3-shm",
                "hosts", "hosts/1", "hosts/1/config", "hosts/1/known_hosts", "hosts/1/ssh", "cm"}
    private = {"d": "drwx------", "-": "-rw-------"}
    wrong = {path: mode for path, (mode, uid) in seen.items()
             if uid != os.getuid() or (mode != private.get(mode[0]) and (path, mode) != ("hosts/1/ssh", "-rwx------"))}
    assert not wrong, f"not private (0700 dirs, 0600 files; the ssh wrapper 0700) under umask {umask:04o}: {wrong}"
    assert expected <= set(seen), f"not made: {sorted(expected - set(seen))}"


def run_settings(data: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=app_env(data),
                          capture_output=True, text=True, timeout=60)


def test_a_data_dir_another_user_owns_or_can_write_is_refused_and_left_as_it_was(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)  # nobody
    proc = run_settings(theirs)
    assert proc.returncode != 0
    assert f"{theirs} belongs to uid 65534, not to uid {os.geteuid()}" in proc.stderr
    assert not list(theirs.iterdir()), "nothing was written into it"
    assert (theirs.stat().st_uid, stat.S_IMODE(theirs.stat().st_mode)) == (65534, 0o700)

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    proc = run_settings(shared)
    assert proc.returncode != 0
    assert f"{shared} is writable by group or others (mode 1777)" in proc.stderr
    assert not list(shared.iterdir())
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777, "someone else's /tmp-like directory is not 'fixed'"


def test_a_data_dir_of_ours_with_wider_modes_is_narrowed(tmp_path):
    ours = tmp_path / "ours"
    ours.mkdir()
    ours.chmod(0o755)  # an older vmseal's, or a mkdir under umask 022
    assert run_settings(ours).returncode == 0
    assert stat.S_IMODE(ours.stat().st_mode) == 0o700


def test_an_older_vmseals_readable_files_in_our_data_dir_are_narrowed(tmp_path):
    """A database and logs an older vmseal left 0644 in the data directory are made 0600; a link in it
    and its target are left alone."""
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o700)
    for name in ("vmseal.sqlite3", "qcluster-test.log"):
        (ours / name).write_text("x")
        (ours / name).chmod(0o644)
    outside = tmp_path / "outside"
    outside.write_text("y")
    outside.chmod(0o644)
    (ours / "link").symlink_to(outside)
    assert run_settings(ours).returncode == 0
    assert {n: stat.S_IMODE((ours / n).stat().st_mode) for n in ("vmseal.sqlite3", "qcluster-test.log")} == {
        "vmseal.sqlite3": 0o600, "qcluster-test.log": 0o600}
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644


def test_a_data_dir_too_long_for_control_sockets_does_not_share_connections(tmp_path, settings):
    from hostjobs.transport import SOCKET_PATH_MAX, SSHTarget

    settings.DATA_DIR = tmp_path / ("d" * (SOCKET_PATH_MAX - len(str(tmp_path))))
    settings.DATA_DIR.mkdir()
    target = SSHTarget(1, "10.211.0.250", 22, "root", KEY).materialize()
    config = target.config.read_text()
    assert "ControlMaster no\n" in config
    assert "ControlPath none\n" in config
    assert not (settings.DATA_DIR / "cm").exists()


# -- a local user and the SSH control sockets (a real unprivileged user, a real test host) ---------------
# What a local user could run at the control socket path: a fake ssh master speaking enough of the mux
# protocol (hello, alive check) for the ssh client to send it its session request, command included.
FAKE_MASTER = r"""
import os, socket, struct, sys
path, record, ready = sys.argv[1:4]
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
os.chmod(path, 0o777)
srv.listen(8)
open(ready, "w").close()

def packet(c):
    head = c.recv(4, socket.MSG_WAITALL)
    if len(head) < 4:
        return None
    return c.recv(struct.unpack(">I", head)[0], socket.MSG_WAITALL)

def send(c, *words):
    body = b"".join(struct.pack(">I", w) for w in words)
    c.sendall(struct.pack(">I", len(body)) + body)

while True:
    c, _ = srv.accept()
    with open(record, "ab") as f:
        f.write(b"connected\n")
        f.flush()
        c.settimeout(5)
        try:
            while (body := packet(c)) is not None:
                f.write(body + b"\n")
                f.flush()
                kind = struct.unpack(">I", body[:4])[0]
                if kind == 0x00000001:  # MUX_MSG_HELLO
                    send(c, 0x00000001, 4)
                elif kind == 0x10000004:  # MUX_C_ALIVE_CHECK -> MUX_S_ALIVE
                    send(c, 0x80000005, struct.unpack(">I", body[4:8])[0], os.getpid())
                elif kind == 0x10000002:  # MUX_C_NEW_SESSION: the command is in it
                    break
        except OSError:
            pass
    c.close()
"""


def as_user(user) -> list[str]:
    """Run as that user: setpriv execs the command itself (no child left behind when it is killed)."""
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]


@pytest.fixture
def local_user():
    """An unprivileged local user, removed afterwards."""
    name = f"vmseal-t{os.getpid()}"[:32]
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def fake_master(local_user):
    """Start the local user's fake master at a socket path; yields start(path) -> record file."""
    procs = []

    def start(path: Path) -> Path:
        record, ready = path.parent / "record", path.parent / "ready"
        procs.append(subprocess.Popen([*as_user(local_user), "/usr/bin/python3", "-c", FAKE_MASTER, str(path),
                                       str(record), str(ready)]))
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert procs[-1].poll() is None, "the fake master exited"
            assert time.monotonic() < deadline, "the fake master did not start"
            time.sleep(0.05)
        return record

    yield start
    for p in procs:
        p.kill()
        p.wait()


def _host(test_host, name):
    from hostjobs.models import Host

    return Host.objects.create(name=name, address=test_host.address, ssh_user="root", host_key=test_host.host_key)


@pytest.mark.e2e
@pytest.mark.django_db
def test_a_local_user_who_makes_the_old_socket_dir_in_tmp_receives_no_command(test_host, local_user, fake_master,
                                                                             monkeypatch):
    """Before: sockets were in <tmp>/vmseal-ssh-<uid>, which any local user can make first (mkdir with
    exist_ok took theirs), then answer our commands with their own master."""
    import tempfile

    from hostjobs import transport
    from hostjobs.errors import HostError

    tmp = Path(f"/tmp/vmseal-hijack-{os.getpid()}")  # a /tmp of this test's own (other sessions use /tmp)
    tmp.mkdir(mode=0o700)
    tmp.chmod(0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    host = _host(test_host, "hijack-tmp")
    try:
        theirs = tmp / f"vmseal-ssh-{os.getuid()}"
        subprocess.run([*as_user(local_user), "mkdir", "-m", "0777", str(theirs)], check=True)
        record = fake_master(theirs / transport.SSHTarget.of(host).fingerprint)
        marker = f"vmseal-marker-{os.getpid()}"
        try:
            out = transport.run(host, ["echo", marker], timeout=30).stdout
        except HostError as e:
            out = f"failed: {e}"
        got = record.read_bytes() if record.exists() else b""
        assert got == b"", f"the local user's master received our SSH traffic: {got[:300]!r}"
        assert out.strip() == marker, "the command ran on the real host"
    finally:
        transport.close(host)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.e2e
@pytest.mark.django_db
def test_a_socket_dir_another_user_owns_is_refused_and_receives_no_command(test_host, local_user, fake_master,
                                                                           settings):
    """The control socket directory in the data dir is as private as the data dir: one made by another
    user (here chowned to them, with their master listening in it) is refused before ssh runs."""
    from hostjobs import transport
    from hostjobs.errors import HostError
    from vmseal.private import NotPrivate

    base = Path(f"/tmp/vmseal-cm-{os.getpid()}")  # they can reach their directory: 0711 down to it
    base.mkdir(mode=0o711)
    try:
        settings.DATA_DIR = base / "data"
        settings.DATA_DIR.mkdir()
        settings.DATA_DIR.chmod(0o711)  # (a wider mode of ours, which vmseal narrows to 0700)
        theirs = settings.DATA_DIR / "cm"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, local_user.pw_uid, local_user.pw_gid)
        host = _host(test_host, "hijack-cm")
        record = fake_master(theirs / transport.SSHTarget.of(host).fingerprint)
        try:
            with pytest.raises(NotPrivate, match=f"{theirs} belongs to uid {local_user.pw_uid}"):
                transport.run(host, ["echo", "never"], timeout=30)
        except HostError as e:
            raise AssertionError(f"ssh ran with another user's socket directory: {e}") from None
        finally:
            transport.close(host)
        got = record.read_bytes() if record.exists() else b""
        assert got == b"", f"the other user's master received our SSH traffic: {got[:300]!r}"
        assert theirs.stat().st_uid == local_user.pw_uid, "their directory was left as it was"
    finally:
        shutil.rmtree(base, ignore_errors=True)
