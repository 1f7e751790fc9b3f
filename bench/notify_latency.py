"""How fast the app learns that a host job ended: push (the host's signed callback) vs poll only.

Runs N short host jobs (`sleep 0.2` through the job runner) on a test host, for a host row whose
callbacks reach the app's web process and for one whose callbacks go nowhere. For each job it
takes the exit time the runner recorded on the host and the time the HostJob row turned terminal
(both on this machine's clock) and prints percentiles, ending with
`push_p99_ms=<n> poll_p99_ms=<n>`.

    .venv/bin/python bench/notify_latency.py [--jobs 30]     (root; makes and removes host vmseal-notify)
"""

import argparse
import os
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

from _common import fresh_host, remove_host, wait_http  # noqa: E402
from django.core.management import call_command  # noqa: E402

from hostjobs import hostops, runner  # noqa: E402
from hostjobs.models import Host, HostJob, JobAction  # noqa: E402

HOST = "vmseal-notify"


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def measure(host, n):
    out = []
    for _ in range(n):
        job = runner.new_job(host, JobAction.SEAL, parent=None, step="bench", target="bench", description="bench",
                             timeout=60)
        runner.start(job, ["run", "--", "sleep", "0.2"])
        runner.wait(job)
        job = HostJob.objects.get(pk=job.pk)
        assert job.status == "done", job.error
        ended = hostops.helper(host, ["job-status", "--id", str(job.pk)])["ended"]
        out.append((job.completed.timestamp() - ended) * 1000)
        runner.clear(job)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=30)
    args = ap.parse_args()
    call_command("migrate", verbosity=0)
    info = fresh_host(HOST)
    web = None
    try:
        url = f"http://{info['bridge_address']}:{PORT}/api/callbacks/"
        web = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "runserver", "--noreload",
                                f"{info['bridge_address']}:{PORT}"], cwd=ROOT, env=os.environ.copy(),
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(url)
        push = Host.objects.create(name="push", address=info["address"], host_key=info["host_key"], callback_url=url)
        poll = Host.objects.create(name="poll", address=info["address"], host_key=info["host_key"],
                                   callback_url=f"http://{info['bridge_address']}:9/api/callbacks/")
        measure(push, 2)  # warm the SSH connection and the helper bundle
        p = measure(push, args.jobs)
        q = measure(poll, args.jobs)
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
