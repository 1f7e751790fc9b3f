"""Four seals across two test hosts (two 2-disk VMs on each): one after another, then all at once,
through the API, a real qcluster and a real web process receiving the hosts' pushes.

Prints both walls, the CPU the sequential seals used (from /proc/stat), the CPU-bound ceiling on this
machine (the concurrent wall cannot beat max(CPU-seconds / cores, the longest single seal)), and last
`concurrency_ratio=<concurrent wall / sequential wall>`.

    .venv/bin/python bench/concurrency.py [--quick]
    (root; makes and removes its own test hosts, vmseal-b<pid>c1 and vmseal-b<pid>c2)

--quick (CI): one host, one VM, no warm-up: one seal alone, then the same VM's seal as the "all at once"
batch (a batch of one): two seals, the same path end to end (the API, the qcluster, the pushes, the
walls, the CPU count); its figures are a check that the bench works, not a measurement.
"""

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "var" / "bench-concurrency"
shutil.rmtree(DATA, ignore_errors=True)
os.environ["VMSEAL_DATA_DIR"] = str(DATA)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vmseal.settings")
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
PORT = 8796
SEAL_WAIT = 3600  # seconds: the seals' own deadlines end them long before

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


def cpu_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


def define(name, info, vm):
    import subprocess

    images = Path(info["root"]) / "lib-libvirt" / "images"
    disks = ["/var/lib/libvirt/images/" + p.name for p in guestdisk.build(images, "two", vm)]
    (images / f"{vm}.xml").write_text(guestdisk.domain_xml(vm, disks))
    subprocess.run([*TESTHOSTS, "exec", name, "--", "virsh", "-c", "qemu:///system", "define",
                    f"/var/lib/libvirt/images/{vm}.xml"], check=True, capture_output=True)


def seal(api, requests):
    """POST all requests at once; wait until every operation job is terminal. Wall seconds."""
    t0 = time.monotonic()
    ids = []
    for body in requests:
        r = api.post("/api/templates/", {**body, "seal": True}, format="json")
        if r.status_code != 202:
            fail(f"POST /api/templates/ {body} answered {r.status_code}: {r.content[:500]!r}")
        ids.append(r.json()["id"])
    while True:
        jobs = list(HostJob.objects.filter(pk__in=ids))
        if all(j.is_terminal for j in jobs):
            break
        if time.monotonic() - t0 > SEAL_WAIT:
            fail(f"operation jobs not ended after {SEAL_WAIT} s: {[(j.pk, j.status) for j in jobs]}")
        time.sleep(0.1)
    wall = time.monotonic() - t0
    if any(j.status != "done" for j in jobs):
        fail(f"operation jobs not done: {[(j.pk, j.status, j.error) for j in jobs if j.status != 'done']}")
    return wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one host, one VM, two seals: a check that the bench works")
    args = ap.parse_args()
    names = [host_name("c1")] if args.quick else [host_name("c1"), host_name("c2")]
    vms = ("vma",) if args.quick else ("vma", "vmb")
    call_command("migrate", verbosity=0)
    infos = {}
    qc = web = None
    try:
        for name in names:
            infos[name] = fresh_host(name)
        bridge = infos[names[0]]["bridge_address"]
        check_port_free(bridge, PORT)
        callback = f"http://{bridge}:{PORT}/api/callbacks/"
        env = {**os.environ, "VMSEAL_Q_WORKERS": "6", "VMSEAL_CALLBACK_URL": callback,
               "VMSEAL_ALLOWED_HOSTS": f"{bridge},localhost"}
        web = gunicorn(f"{bridge}:{PORT}", env=env)
        qc = qcluster(env)
        hosts = []
        for i, name in enumerate(names):
            info = infos[name]
            for vm in vms:
                define(name, info, vm)
            hosts.append(Host.objects.create(name=f"bc{i + 1}", address=info["address"], host_key=info["host_key"],
                                             guestfs_backend_settings="force_tcg"))
        api = APIClient()
        api.force_authenticate(User.objects.create_superuser("bench", "b@x", "bench-pass-1"))
        wait_http(callback)
        cores = os.cpu_count()
        print(f"{len(hosts)} hosts, {len(vms)} VMs each (2 disks), seal limit {hosts[0].seal_limit} per host, "
              f"{cores} cores", flush=True)
        if not args.quick:  # warm: each host's appliance cache and SSH connection, outside the measurement
            seal(api, [{"name": f"warm-{h.pk}", "host": h.pk, "vm": "vma"} for h in hosts])
        plan = [(h, vm) for h in hosts for vm in vms]
        busy0, total0 = cpu_busy()
        sequential = 0.0
        singles = []
        for i, (h, vm) in enumerate(plan):
            w = seal(api, [{"name": f"seq-{i}", "host": h.pk, "vm": vm}])
            singles.append(w)
            sequential += w
            print(f"sequential seal {i + 1} ({h.name}/{vm}): {w:.1f}s", flush=True)
        busy1, total1 = cpu_busy()
        cpu_seconds = busy1 - busy0
        concurrent = seal(api, [{"name": f"conc-{i}", "host": h.pk, "vm": vm} for i, (h, vm) in enumerate(plan)])
        print(f"concurrent: {len(plan)} seals in {concurrent:.1f}s")
        print(f"sequential: {len(plan)} seals in {sequential:.1f}s, using {cpu_seconds:.0f} CPU-seconds "
              f"({cpu_seconds / sequential:.2f} cores busy on average of {cores})")
        floor = max(cpu_seconds / cores, max(singles))
        print(f"cpu_bound_ceiling={floor / sequential:.3f} (best possible concurrent/sequential on {cores} cores)")
        print(f"concurrency_ratio={concurrent / sequential:.3f}")
    finally:
        stop(qc)
        stop(web)
        for name in names:
            remove_host(name)


if __name__ == "__main__":
    main()
