"""The host-side job runner (hooks/vmseal_host.py), run for real on this machine against a temporary
jobs directory: detached start, state on disk, results, abort, a vanished runner, idempotent start,
an unknown job. No app, no mocks: these are the processes a host runs."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

HELPER = Path(__file__).resolve().parents[1] / "hooks" / "vmseal_host.py"
RULES = Path(__file__).resolve().parents[1] / "volumes" / "rules.py"


@pytest.fixture
def host_lib(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "vmseal_host.py").write_text(HELPER.read_text())
    (lib / "vmseal_rules.py").write_text(RULES.read_text())
    jobs = tmp_path / "jobs"
    env = {**os.environ, "VMSEAL_JOBS_DIR": str(jobs), "VMSEAL_POOL_FULL_GRACE": "1"}

    def call(*args, stdin=None, umask=None):
        p = subprocess.run([sys.executable, str(lib / "vmseal_host.py"), *args], input=stdin, capture_output=True,
                           text=True, env=env, timeout=30, umask=-1 if umask is None else umask)
        return p.returncode, json.loads(p.stdout.strip().splitlines()[-1])

    return call, jobs


def start(call, *argv):
    job = str(uuid.uuid4())
    spec = json.dumps({"args": ["run", "--", *argv], "host": 1})
    rc, st = call("job-start", "--id", job, stdin=spec)
    assert rc == 0
    return job, st, None


def wait_terminal(call, job, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc, st = call("job-status", "--id", job)
        if st["status"] in ("done", "failed", "aborted"):
            return st
        time.sleep(0.05)
    raise AssertionError(f"job {job} not terminal")


def test_a_job_returns_at_once_runs_detached_and_records_its_end(host_lib):
    call, jobs = host_lib
    job, st, _ = start(call, "sh", "-c", "echo hello; sleep 2; echo bye")
    assert st["status"] == "running", "job-start returned while the job still runs: it did not wait for it"
    assert st["pid"]
    end = wait_terminal(call, job)
    assert end["status"] == "done"
    assert end["exit_code"] == 0
    assert "hello" in end["log"]
    assert "bye" in end["log"]
    assert end["ended"] >= end["started"]
    assert oct((jobs / job / "spec.json").stat().st_mode & 0o777) == "0o600", "the spec holds the callback secret"


def test_a_failing_job_is_failed_with_its_exit_code(host_lib):
    call, _ = host_lib
    job, _, _ = start(call, "sh", "-c", "echo oops >&2; exit 4")
    end = wait_terminal(call, job)
    assert end["status"] == "failed"
    assert end["exit_code"] == 4
    assert "oops" in end["log"]


def test_starting_an_existing_job_never_runs_it_twice(host_lib):
    call, jobs = host_lib
    job, _, _ = start(call, "sh", "-c", 'echo ran >> "$0"', str(jobs / "count"))
    wait_terminal(call, job)
    rc, again = call("job-start", "--id", job, stdin=json.dumps({"args": ["run", "--", "true"], "host": 1}))
    assert rc == 0
    assert again["status"] == "done"
    time.sleep(0.5)
    assert (jobs / "count").read_text() == "ran\n"


def test_abort_stops_the_work_and_its_children(host_lib):
    call, _ = host_lib
    # a duration no other process on this machine uses, so pgrep finds only this job's sleeps
    marker = f"sleep 300.{uuid.uuid4().int % 10**9:09d}"
    job, st, _ = start(call, "sh", "-c", f"{marker} & {marker}; wait")
    time.sleep(0.5)
    assert len(subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()) >= 2, "it runs"
    rc, end = call("job-abort", "--id", job)
    assert rc == 0
    assert end["status"] == "aborted"
    rc, again = call("job-abort", "--id", job)
    assert rc == 3
    assert again["error"] == "job_terminal"
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    assert not out, "nothing of the aborted job is left running"


@pytest.fixture
def small_pool(tmp_path):
    """A 1 MiB tmpfs as a template pool, and a way to fill it."""
    pool = tmp_path / "pool"
    pool.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(pool)], check=True)
    try:
        yield pool, lambda: subprocess.run(["dd", "if=/dev/zero", f"of={pool}/filler", "bs=64k"],
                                           capture_output=True)
    finally:
        subprocess.run(["umount", str(pool)], check=False)


def test_a_command_stalled_on_a_full_pool_is_stopped_and_says_so(host_lib, small_pool):
    """qemu pauses virt-sysprep's appliance when the pool fills up, and nothing ends it but the job's
    deadline (30 min by default); the helper stops the command once the pool has stayed full for the
    grace (1 s here), with everything the command started, and says why."""
    call, _ = host_lib
    pool, fill = small_pool
    marker = f"sleep 300.{uuid.uuid4().int % 10**9:09d}"
    job = str(uuid.uuid4())
    spec = json.dumps({"args": ["run", "--pool", str(pool), "--", "sh", "-c", f"{marker} & {marker}; wait"],
                       "host": 1})
    assert call("job-start", "--id", job, stdin=spec)[0] == 0
    time.sleep(3)
    assert call("job-status", "--id", job)[1]["status"] == "running", "a pool with room: the command runs on"
    fill()
    end = wait_terminal(call, job, timeout=20)
    assert end["status"] == "failed"
    assert end["result"]["error"] == "pool_full"
    assert f"the template pool {pool} on this host is full" in end["error"]
    assert "vmseal: error: the template pool" in call("job-status", "--id", job)[1]["log"]
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    assert not out, "nothing of the stopped command is left running"


def test_a_runner_that_vanished_reads_as_failed(host_lib):
    call, _ = host_lib
    job, st, _ = start(call, "sleep", "30")
    os.kill(st["pid"], signal.SIGKILL)
    time.sleep(0.2)
    rc, seen = call("job-status", "--id", job)
    assert seen["status"] == "failed"
    assert "vanished" in seen["error"]


def test_an_unknown_job_is_a_clear_refusal(host_lib):
    call, _ = host_lib
    rc, st = call("job-status", "--id", str(uuid.uuid4()))
    assert rc == 3
    assert st["error"] == "no_such_job"
    rc, st = call("job-status", "--id", "../../etc")
    assert rc == 3
    assert st["error"] == "bad_job_id"


@pytest.fixture
def receiver():
    """A real HTTP endpoint standing in for the app's callback URL: records bodies, answers ``status``."""
    import http.server
    import threading

    got, answer = [], {"status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(answer["status"])
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}/api/callbacks/", got, answer
    finally:
        srv.shutdown()


def _start_with_callback(call, url, *argv):
    job = str(uuid.uuid4())
    rc, _ = call("job-start", "--id", job, stdin=json.dumps({"args": ["run", "--", *argv], "host": 1,
                                                               "callback_url": url, "secret": "s3cret"}))
    assert rc == 0
    return job


def _wait_pushed(got, n, timeout=20):
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(got) >= n, "no notification arrived"


def test_a_done_job_pushes_its_whole_log_and_removes_itself_once_taken(host_lib, receiver):
    call, jobs = host_lib
    url, got, _ = receiver
    job = _start_with_callback(call, url, "sh", "-c", "echo first; echo last")
    _wait_pushed(got, 1)
    body = got[0]
    assert (body["job"], body["status"], body["log_complete"]) == (job, "done", True)
    assert "first" in body["log"]
    assert "last" in body["log"]
    assert body["log_offset"] == len(body["log"].encode())
    deadline = time.monotonic() + 5
    while (jobs / job).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (jobs / job).exists(), "nothing left to fetch or clear"
    rc, st = call("job-status", "--id", job)
    assert (rc, st["error"]) == (3, "no_such_job")


def test_a_push_not_taken_or_a_failed_job_leaves_the_job_for_the_poller(host_lib, receiver):
    call, jobs = host_lib
    url, got, answer = receiver
    failed = _start_with_callback(call, url, "sh", "-c", "echo bad; exit 2")
    _wait_pushed(got, 1)
    assert got[0]["status"] == "failed"
    assert "log" not in got[0], "only a done job's push carries its log"
    answer["status"] = 500  # the app did not take it: three tries, then the poller's turn
    done = _start_with_callback(call, url, "true")
    _wait_pushed(got, 4)
    time.sleep(0.5)
    for job, status in ((failed, "failed"), (done, "done")):
        rc, st = call("job-status", "--id", job)
        assert (rc, st["status"]) == (0, status), "kept on the host until polled and cleared"


def test_a_jobs_files_are_private_in_its_directory_where_its_command_runs_and_go_when_it_ends(host_lib):
    """What must not be in an argv (a root password hash) comes in the spec, on stdin: the job writes it
    0600 in its own directory, its command runs there, and the file is gone when the job ends."""
    call, jobs = host_lib
    job = str(uuid.uuid4())
    secret = "$6$salt$not-in-any-argv"
    spec = json.dumps({"args": ["run", "--", "sh", "-c", "pwd; stat -c '%a %s' customize.cmds; sleep 1"],
                       "host": 1, "files": {"customize.cmds": secret + "\n"}})
    rc, st = call("job-start", "--id", job, stdin=spec)
    assert rc == 0, st
    end = wait_terminal(call, job)
    assert end["status"] == "done", end
    d = jobs / job
    assert f"{d}\n600 {len(secret) + 1}\n" in end["log"]
    assert not (d / "customize.cmds").exists()
    for bad in ({"../x.cmds": "a"}, {"spec.json": "a"}, {"state.json": "a"}, {"a.cmds": 1}, ["a"]):
        rc, out = call("job-start", "--id", str(uuid.uuid4()), stdin=json.dumps({"args": ["run", "--", "true"],
                                                                                  "files": bad}))
        assert (rc, out["error"]) == (3, "bad_spec"), bad
    assert sorted(p.name for p in jobs.iterdir()) == [job], "a refused start leaves no job behind"


def test_the_report_disk_is_made_for_the_command_and_only_its_vmseal_lines_come_back(host_lib, tmp_path):
    """The guest's report reaches the host on a raw disk the helper makes and reads: it starts with the
    magic, what the command wrote after it is printed line by line (vmseal-guest/-audit lines, printable
    ASCII only), and the disk is removed."""
    _call, _jobs = host_lib
    work = tmp_path / "work"
    work.mkdir()
    writer = ("head -c 16 report.img > seen; "
              "printf 'VMSEAL-REPORT-V1\\nvmseal-guest {\"id\": \"x\"}\\nnot ours\\n"
              "vmseal-audit ok hostname: \\033[31mred\\nvmseal-audit ok random seed: \\n' > report.img")
    helper = str(tmp_path / "lib" / "vmseal_host.py")
    p = subprocess.run([sys.executable, helper, "run", "--report-disk", "report.img", "--", "sh", "-c", writer],
                       cwd=work, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (work / "seen").read_text() == "VMSEAL-REPORT-V1"
    out = p.stdout.splitlines()
    report = out[out.index("vmseal: the guest's report:") + 1:-1]
    assert report == ['vmseal-guest {"id": "x"}', "vmseal-audit ok random seed: "]
    assert json.loads(out[-1])["exit_code"] == 0
    assert not (work / "report.img").exists()


def modes(top: Path) -> dict[str, str]:
    """Every directory and file under ``top`` (itself included): relative path -> octal mode."""
    out = {".": oct(top.stat().st_mode & 0o7777)}
    for p in top.rglob("*"):
        out[str(p.relative_to(top))] = oct(p.lstat().st_mode & 0o7777)
    return out


def test_job_directories_and_files_are_roots_alone_whatever_the_umask(host_lib):
    """A job's spec holds the callback secret, its log what the job printed: 0700 / 0600 even when the
    helper is started under umask 000."""
    call, jobs = host_lib
    job = str(uuid.uuid4())
    spec = json.dumps({"args": ["run", "--", "sh", "-c", "echo hello; sleep 2"], "host": 1, "secret": "s3cret"})
    rc, st = call("job-start", "--id", job, stdin=spec, umask=0o000)
    assert rc == 0
    assert st["status"] == "running"
    running = modes(jobs)  # while it runs, its state rewritten by the runner
    wait_terminal(call, job)
    for seen in (running, modes(jobs)):
        assert {".", job, f"{job}/spec.json", f"{job}/state.json", f"{job}/log"} <= set(seen)
        wrong = {p: m for p, m in seen.items() if m != ("0o700" if (jobs / p).is_dir() else "0o600")}
        assert not wrong, f"readable by others (want 0700 dirs, 0600 files): {wrong}"


def test_volumes_and_metadata_are_roots_alone_and_read_only_once_shared(host_lib, tmp_path):
    """A template disk and its metadata: 0600 while writable, 0400 once SHARED (before: 0644, then 0444),
    in a pool directory made 0711 (searchable by qemu's user, not listable); qemu-img, started by the
    helper, makes the disk under its umask."""
    call, _ = host_lib
    source = tmp_path / "source.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(source), "1M"], check=True)
    pool, vol = tmp_path / "pool", str(uuid.uuid4())
    rc, made = call("create-volume", "--pool", str(pool), "--id", vol, "--source", str(source),
                    "--source-format", "raw", umask=0o000)
    assert rc == 0, made
    assert modes(pool) == {".": "0o711", f"{vol}.qcow2": "0o600", f"{vol}.meta": "0o600"}
    rc, shared = call("update-volume", "--pool", str(pool), "--id", vol, "--generation", "0", "--type", "SHARED",
                      umask=0o000)
    assert rc == 0, shared
    assert shared["mode"] == "0o400"
    assert modes(pool) == {".": "0o711", f"{vol}.qcow2": "0o400", f"{vol}.meta": "0o400"}
    rc, deleted = call("delete-volume", "--pool", str(pool), "--id", vol, umask=0o000)
    assert (rc, deleted["deleted"]) == (0, True), "root still deletes a read-only SHARED volume"
    assert modes(pool) == {".": "0o711"}
