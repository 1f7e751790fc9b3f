"""How fast the app learns that a host job ended: push (the host's signed callback) vs poll only.

Runs N short host jobs through the job runner on a test host, for a host row whose callbacks reach the
app's web process and for one whose callbacks go nowhere. Each job's command sleeps 0.2 s and, as its
last act, prints the host's clock (`bench-exit <unix time>`); the runner sends that log to the app with
the job's end (pushed whole with a done job, or fetched by the poll), and the app stores it in
HostJob.log. The bench never asks the host after the end: a pushed done job's directory is gone from the
host once the app took the push. For each job it takes the time the HostJob row turned terminal
(`completed`) minus that exit time (both on this machine's clock: test hosts are namespaces of it), so
the delay includes the runner recording the exit, and prints percentiles, ending with
`push_p99_ms=<n> poll_p99_ms=<n>`. A push-host job whose end was not pushed (the host did not clear it),
or a poll-host job that was, fails the bench.

    .venv/bin/python bench/notify_latency.py [--jobs 30] [--quick]
    (root; makes and removes its own test host, vmseal-b<pid>n; --quick: 3 jobs each, for CI)
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "var" / "bench-notify"
PORT = 8766
shutil.rmtree(DATA, ignore_errors=True)
os.environ["VMSEAL_DATA_DIR"] = str(DATA)
os.environ["VMSEAL_ALLOWED_HOSTS"] = "10.211.0.1,localhost"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vmseal.settings")
sys.path[:0] = [str(ROOT)]

import django  # noqa: E402

django.setup()

from _common import check_port_free, fail, fresh_host, host_name, remove_host, wait_http  # noqa: E402
from django.core.management import call_command  # noqa: E402

from hostjobs import runner  # noqa: E402
from hostjobs.models import Host, HostJob, JobAction  # noqa: E402

HOST = host_name("n")
EXIT_LINE = re.compile(r"^bench-exit (\d+\.\d+)$", re.M)
# the job's command: its last act prints the host's clock (GNU date, nanoseconds)
COMMAND = ["sh", "-c", "sleep 0.2; echo bench-exit $(date +%s.%N)"]


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def measure(host, n, pushed: bool):
    """Delays in ms between each job's exit on the host and its row turning terminal; ``pushed``: whether
    the host's push must have delivered the end (the push host) or must not have (the poll host)."""
    out = []
    for _ in range(n):
        job = runner.new_job(host, JobAction.SEAL, parent=None, step="bench", target="bench", description="bench",
                             timeout=60)
        runner.start(job, ["run", "--", *COMMAND])
        runner.wait(job)
        job = HostJob.objects.get(pk=job.pk)
        if job.status != "done":
            fail(f"job {job.pk} on {host.name} is {job.status}: {job.error}")
        if job.host_cleared != pushed:
            fail(f"job {job.pk} on {host.name}: its end was {'not ' if pushed else ''}pushed by the host")
        exits = EXIT_LINE.findall(job.log)
        if len(exits) != 1:
            fail(f"job {job.pk} on {host.name}: no single 'bench-exit' line in its log: {job.log!r}")
        out.append((job.completed.timestamp() - float(exits[0])) * 1000)
        if not job.host_cleared:
            runner.clear(job)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="3 jobs each, one warm-up: a check that the bench works")
    args = ap.parse_args()
    if args.quick:
        args.jobs = 3
    call_command("migrate", verbosity=0)
    info = fresh_host(HOST)
    web = None
    try:
        check_port_free(info["bridge_address"], PORT)
        url = f"http://{info['bridge_address']}:{PORT}/api/callbacks/"
        web = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "runserver", "--noreload",
                                f"{info['bridge_address']}:{PORT}"], cwd=ROOT, env=os.environ.copy(),
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(url)
        push = Host.objects.create(name="push", address=info["address"], host_key=info["host_key"], callback_url=url)
        poll = Host.objects.create(name="poll", address=info["address"], host_key=info["host_key"],
                                   callback_url=f"http://{info['bridge_address']}:9/api/callbacks/")
        measure(push, 1 if args.quick else 2, pushed=True)  # warm the SSH connection and the helper bundle
        p = measure(push, args.jobs, pushed=True)
        q = measure(poll, args.jobs, pushed=False)
        for name, v in (("push", p), ("poll", q)):
            print(f"{name}: n={len(v)} p50={pct(v, 50):.0f}ms p90={pct(v, 90):.0f}ms p99={pct(v, 99):.0f}ms "
                  f"max={max(v):.0f}ms")
        print(f"push_p99_ms={pct(p, 99):.0f} poll_p99_ms={pct(q, 99):.0f}")
    finally:
        if web:
            os.killpg(web.pid, signal.SIGTERM)
        remove_host(HOST)


if __name__ == "__main__":
    main()
