"""The fault matrix: each fault injected while a sealed template is being made, once during COPY_DISKS
and once during SEAL, on real test hosts, with the same invariants checked after every cell:

- no template is ``ok`` unless its disks were sealed and audited, and no volume is LEGAL unless its
  template is ``ok``;
- no job is left non-terminal (past its deadline or otherwise) once the operation has settled;
- the source VM's disks are byte-identical;
- the host's pool holds exactly the volumes the DB knows;
- a failed operation says why.

Faults local to one host run at once, each on its own test host; the app-wide ones (the qcluster
killed, the database unavailable) hit a flow in COPY_DISKS and another in SEAL at the same moment.
The matrix (cell x phase -> pass/fail) is printed at the end of the run (conftest)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from tests.fixtures.services import Service
from tests.fixtures.testhosts import TestHost, down, up
from tests.utils.api import add_host, superuser_api
from tests.utils.jobs import ensure_schedules
from tests.utils.paths import ROOT, TESTHOSTS

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

PHASES = ("COPY_DISKS", "SEAL")
LOCAL = ("sshd_killed", "libvirtd_killed", "link_down", "command_killed", "command_fails", "pool_full",
         "vm_started")
GLOBAL = ("worker_killed", "db_unavailable")
FAULTS = GLOBAL + LOCAL
LANES = 3  # test hosts for the host-local cells
SEAL_TIMEOUT = 240  # a seal's deadline here (a paused appliance - pool full - is only ended by it)
RESULTS: dict[tuple[str, str], str] = {}  # read by conftest's terminal summary
INJECT = {"COPY_DISKS": "copy", "SEAL": "seal"}


@dataclass
class Cell:
    fault: str
    phase: str
    th: TestHost
    host_id: int = 0
    vm: str = ""
    sources: list = field(default_factory=list)
    before: dict = field(default_factory=dict)
    op_id: str = ""
    template_id: int = 0
    log: list = field(default_factory=list)
    seen: dict = field(default_factory=dict)

    @property
    def key(self):
        return f"{self.fault}-{self.phase}"


# -- the environment ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(test_env, qcluster, callback_server, django_db_blocker):
    """Test hosts, Host rows, VMs per cell, and our own qcluster (the cells kill and restart it)."""
    from hostjobs import transport
    from hostjobs.models import Host
    from hostjobs.transport import app_public_key

    qcluster.stop()
    names = [f"vmseal-f{os.getpid()}{chr(97 + i)}" for i in range(LANES + 1)]
    hosts = []
    cluster_env = {**test_env, "VMSEAL_SEAL_TIMEOUT": str(SEAL_TIMEOUT), "VMSEAL_COPY_TIMEOUT": "180",
                   "VMSEAL_STORAGE_TIMEOUT": "60", "VMSEAL_Q_WORKERS": "12"}
    cluster = Service(["qcluster"], cluster_env, "qcluster-faults.log").start()
    try:
        for name in names:
            th = up(name)
            th.authorize(app_public_key())
            hosts.append(th)
        with django_db_blocker.unblock():
            _, api = superuser_api("faults")
            ensure_schedules()
            yield {"api": api, "hosts": hosts, "cluster": cluster, "cluster_env": cluster_env}
            for h in Host.objects.all():
                transport.close(h)
    finally:
        cluster.stop()
        for name in names:
            down(name)
        qcluster.start()


def prepare(cell: Cell, api) -> None:
    """A fresh 2-disk VM and a Host row of its own (COPY cells copy at 2 MB/s, so the copy lasts)."""
    cell.vm = f"vm-{cell.key}".replace("_", "-").lower()
    filler = 12 if cell.phase == "COPY_DISKS" else 0
    cell.sources = cell.th.define_vm(cell.vm, "two", filler_mb=filler)
    cell.before = cell.th.sha256(cell.sources)
    pool = f"/var/lib/vmseal/{cell.key.lower()}"
    if cell.fault == "pool_full":  # a small pool of its own: tmpfs in the host's mount namespace
        cell.th.exec("mkdir", "-p", pool)
        cell.th.exec("mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", pool)
    extra = {"copy_rate_limit": 2 << 20} if cell.phase == "COPY_DISKS" else {}
    if (cell.fault, cell.phase) == ("pool_full", "SEAL"):
        extra["seal_timeout"] = 200  # its appliance pauses on the full pool: the host's helper must stop it first
    cell.host_id = add_host(api, cell.th, f"h-{cell.key}", pool, **extra).pk


def start(cell: Cell, api) -> None:
    body = {"name": f"tpl-{cell.key}", "host": cell.host_id, "vm": cell.vm, "seal": True}
    if cell.fault == "command_fails" and cell.phase == "SEAL":  # virt-sysprep itself fails: no user "ghost"
        body["seal_options"] = {"ssh_keys": [{"user": "ghost", "key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYxX"
                                                                     "A9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK"}]}
    r = api.post("/api/templates/", body, format="json")
    assert r.status_code == 202, r.content
    cell.op_id = r.json()["id"]
    cell.template_id = int(r.json()["target"].split(":")[1])


def reach_phase(cell: Cell, timeout=300) -> None:
    """Until the cell's copy (the first disk's) or seal runs on the host, confirmed by the host."""
    from hostjobs.models import HostJob

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = HostJob.objects.filter(parent_id=cell.op_id, action=INJECT[cell.phase], status="running",
                                     last_seen__isnull=False).first()
        if job:
            time.sleep(2 if cell.phase == "COPY_DISKS" else 4)  # well inside it
            return
        op = HostJob.objects.get(pk=cell.op_id)
        if op.is_terminal:
            raise AssertionError(f"{cell.key}: the operation ended before {cell.phase}: {op.error}")
        time.sleep(0.2)
    raise AssertionError(f"{cell.key}: {cell.phase} not reached in {timeout}s")


# -- faults ------------------------------------------------------------------------------------------------
def _kill(pids, sig=signal.SIGKILL):
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def _host_up(th: TestHost) -> None:
    subprocess.run([*TESTHOSTS, "up", th.name], check=True, capture_output=True)


def inject(cell: Cell):
    """Inject the cell's fault now; return what heals it (called after the hold), or None."""
    th, f = cell.th, cell.fault
    if f == "sshd_killed":  # the daemon and every session of it (the app's ControlMaster included)
        _kill(th.pids(comm="sshd"))
        return lambda: _host_up(th)
    if f == "libvirtd_killed":
        _kill(th.pids(comm="libvirtd"))
        return lambda: _host_up(th)
    if f == "link_down":
        veth = json.loads(subprocess.run([*TESTHOSTS, "info", th.name], capture_output=True, text=True,
                                         check=True).stdout)["veth"]
        subprocess.run(["ip", "link", "set", veth, "down"], check=True)
        return lambda: subprocess.run(["ip", "link", "set", veth, "up"], check=True)
    if f == "command_killed":
        needle = "qemu-img convert" if cell.phase == "COPY_DISKS" else "virt-sysprep"
        pids = th.pids(cmdline=needle)
        assert pids, f"{cell.key}: no {needle} running"
        _kill(pids)
        return None
    if f == "command_fails":
        if cell.phase == "SEAL":
            return None  # asked for a user the guest lacks: virt-sysprep fails by itself
        # the second disk's source disappears while the first is copied: its copy fails (renamed, not changed)
        src = cell.sources[1]
        th.exec("mv", src, src + ".away")
        cell.seen["restore"] = lambda: th.exec("mv", src + ".away", src)
        return None
    if f == "pool_full":  # full until the operation has ended (then freed, so a clean-up can finish)
        pool = f"/var/lib/vmseal/{cell.key.lower()}"
        th.exec("sh", "-c", f"dd if=/dev/zero of={pool}/filler bs=1M 2>/dev/null; true")
        cell.seen["restore"] = lambda: th.exec("rm", "-f", f"{pool}/filler")
        return None
    if f == "vm_started":  # may fail on the disk's lock while it is copied: the hook fires anyway
        th.virsh("start", cell.vm, check=False)
        cell.seen["restore"] = lambda: th.virsh("destroy", cell.vm, check=False)
        return None
    raise AssertionError(f"unknown local fault {f}")


def settle(cell: Cell, timeout=600) -> None:
    """Until the operation is terminal and its template either ok or gone (a failed clean-up is
    retried by the sweeper); then record what the invariants need."""
    from hostjobs.models import HostJob
    from templates.models import Template

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        op = HostJob.objects.get(pk=cell.op_id)
        if op.is_terminal and "restore" in cell.seen:  # what lasted until the end: undo it now
            cell.seen.pop("restore")()
        t = Template.objects.filter(pk=cell.template_id).first()
        if op.is_terminal and (t is None or (t.status == "ok" and t.phase == "DONE")):
            break
        time.sleep(0.5)
    if "restore" in cell.seen:
        cell.seen.pop("restore")()
    observe(cell)


def observe(cell: Cell) -> None:
    from hostjobs.models import HostJob
    from templates.models import Template
    from volumes.models import Volume

    op = HostJob.objects.get(pk=cell.op_id)
    t = Template.objects.filter(pk=cell.template_id).first()
    host_vols = Volume.objects.filter(host_id=cell.host_id)
    pool = f"/var/lib/vmseal/{cell.key.lower()}"
    cell.seen.update({
        "op": {"status": op.status, "error": op.error, "log": op.log[-2000:]},
        "children": [{"action": c.action, "status": c.status, "deadline": c.deadline, "error": c.error}
                     for c in HostJob.objects.filter(parent_id=cell.op_id)],
        "template": None if t is None else {"status": t.status, "phase": t.phase, "sealed": t.sealed,
                                            "audit": t.audit, "error": t.error},
        "legal_not_ok": [str(v.pk) for v in host_vols.filter(legality="LEGAL")
                         if not (getattr(v, "disk", None) and v.disk.template.status == "ok")],
        "db_volumes": sorted(v.path.rsplit("/", 1)[1] for v in host_vols),
        "pool": sorted(n for n in cell.th.pool_files(pool) if n.endswith(".qcow2")),
        "after": cell.th.sha256(cell.sources),
        "seal_runs": [c.log.count("Examining the guest") for c in HostJob.objects.filter(parent_id=cell.op_id,
                                                                                           action="seal")],
    })


def run_local(cell: Cell, api) -> None:
    try:
        if cell.fault == "vm_started":  # the host's libvirt hooks report domain events for this Host row
            from django.core.management import call_command

            call_command("host_install", f"h-{cell.key}")
        start(cell, api)
        reach_phase(cell)
        heal = inject(cell)
        if heal:
            time.sleep(8)
            heal()
        settle(cell)
    except Exception as e:  # noqa: BLE001 - recorded; the cell's test reports it
        cell.seen["crash"] = f"{type(e).__name__}: {e}"
        try:
            if "restore" in cell.seen:
                cell.seen.pop("restore")()
            observe(cell)
        except Exception:  # noqa: BLE001
            pass
    finally:
        from django.db import connection

        connection.close()


def hold_db(seconds: float) -> None:
    """Make the app's database unavailable for a while: PostgreSQL stopped, or SQLite's file locked
    (an exclusive transaction held by another process)."""
    from django.db import connection

    if os.environ.get("VMSEAL_DB_ENGINE") == "postgresql":
        svc = os.environ.get("VMSEAL_SERVICES_DIR", "/var/tmp/vmseal-services")
        pgbin = sorted(p for p in os.listdir("/usr/lib/postgresql"))[-1]
        ctl = ["runuser", "-u", "postgres", "--", f"/usr/lib/postgresql/{pgbin}/bin/pg_ctl", "-D", f"{svc}/pg"]
        connection.close()
        subprocess.run([*ctl, "-m", "immediate", "-w", "stop"], check=True, capture_output=True)
        time.sleep(seconds)
        subprocess.run([str(ROOT / "scripts" / "services.sh"), "start"], check=True, capture_output=True)
        connection.close()
        return
    db = sqlite3.connect(str(connection.settings_dict["NAME"]), timeout=30, isolation_level=None)
    try:
        db.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        db.execute("ROLLBACK")
    finally:
        db.close()


def run_global(fault: str, cells: dict[str, Cell], env) -> None:
    """One fault for two flows: one in SEAL and one in COPY_DISKS when it strikes."""
    api = env["api"]
    seal_cell, copy_cell = cells["SEAL"], cells["COPY_DISKS"]
    try:
        start(seal_cell, api)
        reach_phase(seal_cell)
        start(copy_cell, api)
        reach_phase(copy_cell)
        if fault == "worker_killed":
            env["cluster"].stop(signal.SIGKILL)
            time.sleep(3)
            env["cluster"].start()
        else:
            hold_db(8)
        for c in (seal_cell, copy_cell):
            settle(c)
    except Exception as e:  # noqa: BLE001
        for c in (seal_cell, copy_cell):
            c.seen.setdefault("crash", f"{type(e).__name__}: {e}")
            try:
                observe(c)
            except Exception:  # noqa: BLE001
                pass


@pytest.fixture(scope="module")
def matrix(env, django_db_blocker):
    """Run every cell; returns {cell key: Cell}."""
    hosts = env["hosts"]
    cells = {}
    lanes: list[list[Cell]] = [[] for _ in range(LANES)]
    # pool_full in SEAL first in its lane (its own tmpfs pool; it was the longest cell while it waited out a deadline)
    order = [("pool_full", "SEAL")] + [(f, p) for f in LOCAL for p in PHASES if (f, p) != ("pool_full", "SEAL")]
    for i, (f, p) in enumerate(order):
        c = Cell(f, p, hosts[i % LANES])
        lanes[i % LANES].append(c)
        cells[c.key] = c
    glob_cells = {f: {p: Cell(f, p, hosts[LANES]) for p in PHASES} for f in GLOBAL}
    for f in GLOBAL:
        for c in glob_cells[f].values():
            cells[c.key] = c
    with django_db_blocker.unblock():
        for c in cells.values():
            prepare(c, env["api"])
    started = time.monotonic()

    def lane(cs):
        with django_db_blocker.unblock():
            for c in cs:
                run_local(c, env["api"])

    with ThreadPoolExecutor(LANES) as pool:
        list(pool.map(lane, lanes))
    local_s = time.monotonic() - started
    with django_db_blocker.unblock():
        for f in GLOBAL:
            run_global(f, glob_cells[f], env)
    print(f"\nfault matrix: host-local cells in {local_s:.0f}s, all in {time.monotonic() - started:.0f}s")
    return cells


# -- the invariants, per cell ----------------------------------------------------------------------------
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("fault", FAULTS)
def test_cell(matrix, fault, phase):
    cell = matrix[f"{fault}-{phase}"]
    RESULTS[(fault, phase)] = "FAIL"
    s = cell.seen
    assert "crash" not in s, s.get("crash")
    op, t = s["op"], s["template"]
    # settled: the operation and every host job are terminal
    assert op["status"] in ("done", "failed", "aborted"), op
    assert all(c["status"] in ("done", "failed", "aborted") for c in s["children"]), s["children"]
    # never usable unless sealed and audited; nothing LEGAL outside an ok template
    if op["status"] == "done":
        assert t is not None
        assert (t["status"], t["phase"], t["sealed"]) == ("ok", "DONE", True), t
        assert t["audit"].get("passed") is True, t["audit"]
        assert s["seal_runs"] == [1], "virt-sysprep ran exactly once"
    else:
        assert t is None, f"a failed operation leaves no template: {t}"
        assert op["error"], "a failed operation says why"
    if fault == "pool_full":  # said as such (SEAL: stopped by the host's helper, not by the seal's deadline)
        assert "is full" in op["error"] or "No space left" in op["error"], op["error"]
    assert not s["legal_not_ok"], s["legal_not_ok"]
    # the source is untouched, and the pool holds exactly what the DB knows
    assert s["after"] == cell.before, "source disks changed"
    assert s["pool"] == s["db_volumes"], (s["pool"], s["db_volumes"])
    RESULTS[(fault, phase)] = f"pass ({op['status']})"
    print(f"{cell.key}: {op['status']} {op['error'][:160]}")


def test_injected_faults_struck_where_intended(matrix):
    """The cells that must fail did (the fault was real), and the ones the design rides out recovered."""
    outcome = {k: c.seen.get("op", {}).get("status") for k, c in matrix.items()}
    must_fail = [f"{f}-{p}" for f in ("command_killed", "command_fails", "vm_started", "pool_full") for p in PHASES]
    assert all(outcome[k] in ("failed", "aborted") for k in must_fail), {k: outcome[k] for k in must_fail}
    # (db_unavailable may end either way: on PostgreSQL a worker's flow can lose its connection mid-step)
    rides_out = [f"{f}-{p}" for f in ("sshd_killed", "libvirtd_killed", "link_down", "worker_killed")
                 for p in PHASES]
    assert all(outcome[k] == "done" for k in rides_out), {k: outcome[k] for k in rides_out}


def matrix_summary() -> list[str]:
    if not RESULTS:
        return []
    lines = [f"{'fault':18} {'COPY_DISKS':22} {'SEAL':22}"]
    for f in FAULTS:
        lines.append(f"{f:18} " + " ".join(f"{RESULTS.get((f, p), 'not run'):22}" for p in PHASES))
    return lines

