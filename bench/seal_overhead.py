"""vmseal vs doing it by hand, on one test host, alternated.

vmseal run: POST /api/templates/ (seal=true) for a stopped 2-disk VM, through a real qcluster, with the
host pushing job ends to a real web process (gunicorn), until the operation job is terminal. Raw run: on
the same host, `qemu-img convert` of each disk, then one `virt-sysprep` with the same argv vmseal uses
(sealing.sysprep.build_command, without vmseal's guard and audit). Prints each run, then
`orchestration_s=<median vmseal wall - median time inside host commands>` and, last,
`overhead_ratio=<median vmseal wall / median raw wall>`.

    .venv/bin/python bench/seal_overhead.py [--runs 3] [--quick]
    (root; makes and removes its own test host, vmseal-b<pid>s)

--quick (CI): one vmseal run and one raw run, no warm-up run: two seals, the same path end to end; its
figures are a check that the bench works, not a measurement (a cold appliance cache, one sample).
"""

import argparse
import os
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
PORT = 8797
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
from sealing import sysprep  # noqa: E402

HOST = host_name("s")
SEAL_WAIT = 1800  # seconds: a seal's own deadline ends it long before


def host_exec(*argv):
    return subprocess.run([*TESTHOSTS, "exec", HOST, "--", *argv], check=True, capture_output=True, text=True)


def vmseal_run(api, host, i):
    t0 = time.monotonic()
    r = api.post("/api/templates/", {"name": f"bench-{i}", "host": host.pk, "vm": "bench2", "seal": True},
                 format="json")
    if r.status_code != 202:
        fail(f"POST /api/templates/ answered {r.status_code}: {r.content[:500]!r}")
    job_id = r.json()["id"]
    while True:
        job = HostJob.objects.get(pk=job_id)
        if job.is_terminal:
            break
        if time.monotonic() - t0 > SEAL_WAIT:
            fail(f"operation job {job_id} still {job.status} after {SEAL_WAIT} s")
        time.sleep(0.05)
    wall = time.monotonic() - t0
    if job.status != "done":
        fail(f"operation job {job_id} is {job.status}: {job.error}")
    inside = sum((c.completed - c.started).total_seconds() for c in job.children.all())
    seal = next(c for c in job.children.all() if c.action == "seal")
    return wall, inside, (seal.completed - seal.started).total_seconds()


def raw_run(disks, i):
    outs = [f"/var/lib/vmseal/raw/{i}-{n}.qcow2" for n in range(len(disks))]
    argv = sysprep.build_command([(o, "qcow2") for o in outs]).argv
    script = "set -e; mkdir -p /var/lib/vmseal/raw; " + "; ".join(
        f"qemu-img convert -f qcow2 -O qcow2 {src} {dst}" for src, dst in zip(disks, outs, strict=True))
    t0 = time.monotonic()
    host_exec("sh", "-c", script)
    t1 = time.monotonic()
    host_exec("env", "LIBGUESTFS_BACKEND=direct", "LIBGUESTFS_BACKEND_SETTINGS=force_tcg", *argv)
    t2 = time.monotonic()
    return t2 - t0, t2 - t1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one run each, no warm-up: a check that the bench works")
    args = ap.parse_args()
    if args.quick:
        args.runs = 1
    call_command("migrate", verbosity=0)
    info = fresh_host(HOST)
    qc = web = None
    try:
        check_port_free(info["bridge_address"], PORT)
        callback = f"http://{info['bridge_address']}:{PORT}/api/callbacks/"
        env = {**os.environ, "VMSEAL_Q_WORKERS": "2", "VMSEAL_CALLBACK_URL": callback,
               "VMSEAL_ALLOWED_HOSTS": f"{info['bridge_address']},localhost"}
        web = gunicorn(f"{info['bridge_address']}:{PORT}", env=env)
        images = Path(info["root"]) / "lib-libvirt" / "images"
        disks = ["/var/lib/libvirt/images/" + p.name for p in guestdisk.build(images, "two", "bench2")]
        (images / "bench2.xml").write_text(guestdisk.domain_xml("bench2", disks))
        host_exec("virsh", "-c", "qemu:///system", "define", "/var/lib/libvirt/images/bench2.xml")
        host = Host.objects.create(name="bench", address=info["address"], host_key=info["host_key"],
                                   guestfs_backend_settings="force_tcg")
        api = APIClient()
        api.force_authenticate(User.objects.create_superuser("bench", "b@x", "bench-pass-1"))
        qc = qcluster(env)
        wait_http(callback)
        # warm the appliance cache and the SSH connection once, outside the measurement (the cluster
        # starts meanwhile); not in a quick run (a seal's worth of CPU)
        if not args.quick:
            raw_run(disks, "warm")
        vm, raw = [], []
        for i in range(args.runs):
            order = (("vmseal", "raw") if i % 2 == 0 else ("raw", "vmseal"))
            for what in order:
                if what == "vmseal":
                    wall, inside, seal = vmseal_run(api, host, i)
                    vm.append((wall, inside, seal))
                    print(f"run {i} vmseal: wall {wall:.2f}s, inside host commands {inside:.2f}s, "
                          f"of which virt-sysprep job {seal:.2f}s", flush=True)
                else:
                    wall, seal = raw_run(disks, i)
                    raw.append((wall, seal))
                    print(f"run {i} raw:    wall {wall:.2f}s, of which virt-sysprep {seal:.2f}s", flush=True)
        med_vm = statistics.median(w for w, _, _ in vm)
        med_inside = statistics.median(x for _, x, _ in vm)
        med_raw = statistics.median(w for w, _ in raw)
        print(f"median vmseal wall {med_vm:.2f}s; median raw wall {med_raw:.2f}s; "
              f"median raw virt-sysprep alone {statistics.median(s for _, s in raw):.2f}s")
        print(f"orchestration_s={med_vm - med_inside:.2f}")
        print(f"overhead_ratio={med_vm / med_raw:.3f}")
    finally:
        stop(qc)
        stop(web)
        remove_host(HOST)


if __name__ == "__main__":
    main()
