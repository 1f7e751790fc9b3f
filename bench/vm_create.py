"""VMs from a sealed template, through the API, on one test host.

Setup (not measured): a test host, a stopped 2-disk VM, one sealed template of it (one appliance launch),
a real web process (gunicorn) the host pushes job ends to and a real qcluster. Then:

  thin     N thin VMs (defined, not started), one after another: POST /api/vms/ until its job is done
  burst    N thin VMs asked at once (N POSTs back to back), until every job is done
  full     full-clone VMs against a raw `qemu-img convert -O qcow2` of the same template volumes on the
           same host, alternated

Prints each figure, then, last: `thin_p50_s= thin_p99_s= burst20_s= thin_overhead_s= full_clone_ratio=`.
thin_overhead_s: the median thin VM's wall time not spent inside its host jobs (the direct calls to the
host - libvirt's lookups and define, the seed's write - count as overhead). full_clone_ratio: median
full VM wall / median raw convert wall. The issue's goals: thin p50 <= 1.5 s, a burst of 20 <= 10 s,
overhead <= 0.5 s, full clone <= 1.10x (with disks large enough that copying dominates: --filler-mb, 1.5 GiB
of random data in the source's root disk by default). Each full VM's time is also broken down (``full
profile``): its phases as its job's log times them, the longest disk copy inside CREATE_DISKS, and the
rest (queueing, the job's start and end, the callbacks) - the fixed cost a full clone adds to a copy.

    .venv/bin/python bench/vm_create.py [--count 20] [--runs 3] [--filler-mb 1536] [--quick]
    (root; makes and removes its own test host, vmseal-b<pid>v)

--quick (CI): 3 thin VMs, a burst of 3, one full VM and one raw copy of small disks: the same path end to
end; its figures check that the bench works, they are not measurements.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "var" / "bench"
shutil.rmtree(DATA, ignore_errors=True)
os.environ["VMSEAL_DATA_DIR"] = str(DATA)
PORT = 8795
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vmseal.settings")
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import django  # noqa: E402

django.setup()

import guestdisk  # noqa: E402
from _common import (  # noqa: E402
    TESTHOSTS,
    check_port_free,
    fail,
    fresh_host,
    gunicorn,
    host_name,
    qcluster,
    remove_host,
    stop,
    wait_http,
)
from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from hostjobs.models import Host, HostJob  # noqa: E402

HOST = host_name("v")
WAIT = 900  # seconds for any job


def host_exec(*argv):
    return subprocess.run([*TESTHOSTS, "exec", HOST, "--", *argv], check=True, capture_output=True, text=True)


def wait_done(job_ids, t0):
    """Until every job is terminal; fail unless all are done. Returns their rows."""
    job_ids = [str(j) for j in job_ids]
    pending = set(job_ids)
    while pending:
        ended = {str(j.pk): j for j in HostJob.objects.filter(pk__in=pending) if j.is_terminal}
        for jid, job in ended.items():
            if job.status != "done":
                fail(f"job {jid} is {job.status}: {job.error}")
            pending.discard(jid)
        if pending and time.monotonic() - t0 > WAIT:
            fail(f"jobs {sorted(pending)} not done after {WAIT} s")
        if pending:
            time.sleep(0.02)
    return list(HostJob.objects.filter(pk__in=job_ids).prefetch_related("children"))


def post_vm(api, template_id, name, clone="thin"):
    r = api.post("/api/vms/", {"template": template_id, "name": name, "clone": clone}, format="json")
    if r.status_code != 202:
        fail(f"POST /api/vms/ answered {r.status_code}: {r.content[:500]!r}")
    return r.json()["id"]


def inside(job) -> float:
    return sum((c.completed - c.started).total_seconds() for c in job.children.all() if c.started and c.completed)


PHASE_RE = re.compile(r"^(\w+) done in ([\d.]+)s$", re.M)


def profile(job, wall) -> dict:
    """Where a full VM's wall time went: each phase (its job's log), the longest copy job, the rest."""
    phases = {name: float(sec) for name, sec in PHASE_RE.findall(job.log)}
    copies = [(c.completed - c.started).total_seconds() for c in job.children.all()
              if c.action == "clone" and c.started and c.completed]
    out = {**phases, "copy(longest)": max(copies, default=0.0)}
    out["outside phases"] = wall - sum(phases.values())
    out["fixed"] = wall - out["copy(longest)"]
    return out


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=20, help="thin VMs one after another, and in the burst")
    ap.add_argument("--runs", type=int, default=3, help="full clones (and raw copies)")
    ap.add_argument("--filler-mb", type=int, default=1536,
                    help="random data in the source's root disk, MiB (what the full clone copies)")
    ap.add_argument("--quick", action="store_true", help="small counts and disks: a check that the bench works")
    args = ap.parse_args()
    if args.quick:
        args.count, args.runs, args.filler_mb = 3, 1, 0
    call_command("migrate", verbosity=0)
    info = fresh_host(HOST)
    qc = web = None
    try:
        check_port_free(info["bridge_address"], PORT)
        callback = f"http://{info['bridge_address']}:{PORT}/api/callbacks/"
        env = {**os.environ, "VMSEAL_Q_WORKERS": "4", "VMSEAL_CALLBACK_URL": callback,
               "VMSEAL_ALLOWED_HOSTS": f"{info['bridge_address']},localhost"}
        web = gunicorn(f"{info['bridge_address']}:{PORT}", env=env)
        images = Path(info["root"]) / "lib-libvirt" / "images"
        disks = ["/var/lib/libvirt/images/" + p.name
                 for p in guestdisk.build(images, "two", "benchvm", args.filler_mb)]
        (images / "benchvm.xml").write_text(guestdisk.domain_xml("benchvm", disks))
        host_exec("virsh", "-c", "qemu:///system", "define", "/var/lib/libvirt/images/benchvm.xml")
        host = Host.objects.create(name="bench", address=info["address"], host_key=info["host_key"],
                                   guestfs_backend_settings="force_tcg")
        api = APIClient()
        api.force_authenticate(User.objects.create_superuser("bench", "b@x", "bench-pass-1"))
        qc = qcluster(env)
        wait_http(callback)
        t0 = time.monotonic()
        r = api.post("/api/templates/", {"name": "benchvm-tpl", "host": host.pk, "vm": "benchvm", "seal": True},
                     format="json")
        if r.status_code != 202:
            fail(f"POST /api/templates/ answered {r.status_code}: {r.content[:500]!r}")
        wait_done([r.json()["id"]], t0)
        template = api.get("/api/templates/").json()["results"][0]
        tpaths = [d["volume"]["path"] for d in api.get(f"/api/templates/{template['id']}/").json()["disks"]]
        print(f"setup: sealed template {template['name']} in {time.monotonic() - t0:.1f}s", flush=True)
        # the SSH and libvirt connections, outside the measurement
        wait_done([post_vm(api, template["id"], "warm")], time.monotonic())

        walls, overheads = [], []
        for i in range(args.count):
            t0 = time.monotonic()
            [job] = wait_done([post_vm(api, template["id"], f"thin-{i}")], t0)
            wall = time.monotonic() - t0
            walls.append(wall)
            overheads.append(wall - inside(job))
        print(f"thin x{args.count} one after another: p50 {pct(walls, 50):.2f}s p99 {pct(walls, 99):.2f}s, "
              f"median overhead {statistics.median(overheads):.2f}s", flush=True)

        t0 = time.monotonic()
        ids = [post_vm(api, template["id"], f"burst-{i}") for i in range(args.count)]
        wait_done(ids, t0)
        burst = time.monotonic() - t0
        print(f"burst of {args.count}: all done in {burst:.2f}s", flush=True)

        full, raw, profiles = [], [], []
        for i in range(args.runs):
            for what in (("vmseal", "raw") if i % 2 == 0 else ("raw", "vmseal")):
                t0 = time.monotonic()
                if what == "vmseal":
                    [job] = wait_done([post_vm(api, template["id"], f"full-{i}", clone="full")], t0)
                    full.append(time.monotonic() - t0)
                    profiles.append(profile(job, full[-1]))
                else:
                    host_exec("sh", "-c", "set -e; mkdir -p /var/lib/vmseal/raw; " + "; ".join(
                        f"qemu-img convert -f qcow2 -O qcow2 {p} /var/lib/vmseal/raw/{i}-{n}.qcow2"
                        for n, p in enumerate(tpaths)))
                    raw.append(time.monotonic() - t0)
                print(f"run {i} {what}: {(full if what == 'vmseal' else raw)[-1]:.2f}s", flush=True)
        keys = list(dict.fromkeys(k for p in profiles for k in p))
        print("full profile (median s): " + ", ".join(
            f"{k} {statistics.median(p.get(k, 0.0) for p in profiles):.2f}" for k in keys), flush=True)
        ratio = statistics.median(full) / statistics.median(raw)
        print(f"thin_p50_s={pct(walls, 50):.2f} thin_p99_s={pct(walls, 99):.2f} burst{args.count}_s={burst:.2f} "
              f"thin_overhead_s={statistics.median(overheads):.2f} full_clone_ratio={ratio:.3f}")
    finally:
        stop(qc)
        stop(web)
        remove_host(HOST)


if __name__ == "__main__":
    main()
