"""GET /api/templates/ at scale: 10,000 templates (2 disks and volumes each, with their operation jobs)
in the database, vmseal served by gunicorn (as README "Deploying" runs it), 32 concurrent API clients
(token auth, keep-alive) each paging through the list for a fixed time.

Prints the SQL queries one page costs at several places in the list (the same number everywhere: no
N+1), latency percentiles and throughput, and last `p99_ms=<n>`.

    .venv/bin/python bench/api_list.py [--db sqlite|postgresql] [--clients 32] [--seconds 20]
                                       [--templates 10000] [--workers 2] [--think-ms 1000] [--quick]
    .venv/bin/python bench/api_list.py --compare [--seconds 20] [--quick]

--compare runs four measurements in one run, each on a database written afresh: SQLite and PostgreSQL,
each at the clients' pace (--think-ms) and back to back (think 0: saturation); it prints each one's
figures, then a table, and last
`pg_sqlite_p99_ratio=<PostgreSQL p99 / SQLite p99 at the pace> saturation_p99_ms_sqlite=<n> saturation_p99_ms_pg=<n>`.

--db postgresql starts the private PostgreSQL of scripts/services.sh (and stops it at the end unless it
was already running). Each client sends its next request when the previous answer arrived, plus a
think time drawn uniformly from 0.5-1.5 x --think-ms (default 1000: people and scripts paging about
once a second; 0: back to back, the most load the clients can make, a saturation test).

--quick (CI): 200 templates, 4 clients for 3 s with a 100 ms think time: the same path end to end (the
database written, the query count at three pages, gunicorn under load); any failed request fails it. Its
figures are a check that the bench works, not a measurement.
"""

import argparse
import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "var" / "bench-api"
PORT = 8798
sys.path[:0] = [str(ROOT)]


def setup_env(db: str) -> tuple[dict, bool]:
    """Environment for this process and gunicorn; whether we started PostgreSQL."""
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)
    env = {"VMSEAL_DATA_DIR": str(DATA), "DJANGO_SETTINGS_MODULE": "vmseal.settings",
           "VMSEAL_ALLOWED_HOSTS": "127.0.0.1,localhost,testserver"}
    started = False
    for k in [k for k in os.environ if k.startswith("VMSEAL_DB_") or k == "VMSEAL_REDIS_URL"]:
        del os.environ[k]  # --compare: the previous measurement's backend
    if db == "postgresql":
        port = os.environ.get("VMSEAL_REDIS_PORT", "56379")  # scripts/services.sh's
        running = subprocess.run(["redis-cli", "-p", port, "ping"], capture_output=True).returncode == 0
        out = subprocess.run([str(ROOT / "scripts" / "services.sh"), "start"], check=True, capture_output=True,
                             text=True).stdout
        started = not running
        for line in out.splitlines():
            k, _, v = line.partition("=")
            env[k] = v
        env["VMSEAL_DB_NAME"] = "vmseal_bench"
        env.pop("VMSEAL_REDIS_URL", None)
        import psycopg

        with psycopg.connect(host=env["VMSEAL_DB_HOST"], port=env["VMSEAL_DB_PORT"], user=env["VMSEAL_DB_USER"],
                             dbname="postgres", autocommit=True) as c:
            c.execute("DROP DATABASE IF EXISTS vmseal_bench")
            c.execute("CREATE DATABASE vmseal_bench")
    os.environ.update(env)
    return env, started


def populate(n: int) -> str:
    """n templates with 2 disks, 2 volumes and an operation job each; returns an API token."""
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import transaction
    from rest_framework.authtoken.models import Token

    from hostjobs.models import Host, HostJob, JobAction, JobStatus
    from templates.models import Phase, Template, TemplateDisk, TemplateStatus
    from volumes.models import Legality, Volume, VolumeType

    call_command("migrate", verbosity=0)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK"
    host = Host.objects.create(name="bench", address="10.211.0.250", host_key=key)
    batch = 1000
    for start in range(0, n, batch):
        with transaction.atomic():
            size = min(batch, n - start)
            jobs = HostJob.objects.bulk_create(
                HostJob(host=host, kind="operation", action=JobAction.CREATE_TEMPLATE, status=JobStatus.DONE,
                        progress=100, description=f"create template {start + i}") for i in range(size))
            tpls = Template.objects.bulk_create(
                Template(name=f"template-{start + i:05d}", description="bench", host=host, vm_name=f"vm-{start + i}",
                         seal=True, sealed=True, status=TemplateStatus.OK, phase=Phase.DONE,
                         guest_os="Debian GNU/Linux 12 (bookworm) (debian 12)", job=jobs[i],
                         audit={"passed": True, "items": [{"item": "ssh host keys", "ok": True, "detail": ""}]})
                for i in range(size))
            vols = Volume.objects.bulk_create(
                Volume(host=host, type=VolumeType.SHARED, legality=Legality.LEGAL, generation=2,
                       path=f"/var/lib/vmseal/templates/{start + i}-{d}.qcow2", size=1 << 30)
                for i in range(size) for d in range(2))
            TemplateDisk.objects.bulk_create(
                TemplateDisk(template=tpls[i], index=d, target=f"vd{'ab'[d]}", source_path=f"/img/{start + i}-{d}",
                             source_format="qcow2", volume=vols[2 * i + d])
                for i in range(size) for d in range(2))
    user = User.objects.create_superuser("bench", "bench@example.test", "bench-pass-1")
    key = Token.objects.create(user=user).key
    from django.db import connection

    if connection.vendor == "postgresql":
        # A production database has its planner statistics and visibility map (autovacuum keeps them): a
        # table bulk-loaded a second ago has neither until autovacuum's next round, up to a minute in,
        # and is planned as if it held ~1,400 rows (a sort of the whole table for every page).
        with connection.cursor() as c:
            c.execute("VACUUM ANALYZE")
    return key


def queries_per_page(token: str, pages: list[int]) -> dict[int, int]:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    out = {}
    for page in pages:
        with CaptureQueriesContext(connection) as q:
            r = client.get(f"/api/templates/?page={page}", HTTP_AUTHORIZATION=f"Token {token}")
        if r.status_code != 200 or len(r.json()["results"]) != 50:
            from _common import fail

            fail(f"page {page}: {r.status_code}, {r.content[:300]!r}")
        out[page] = len(q)
    return out


def load(token: str, clients: int, seconds: float, pages: int, think: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    start_gate = threading.Barrier(clients)

    def client(seed):
        rnd = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        page = rnd.randint(1, pages)
        mine = []
        start_gate.wait()
        if think:  # clients do not arrive in lockstep
            time.sleep(rnd.uniform(0, think))
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                conn.request("GET", f"/api/templates/?page={page}", headers={"Authorization": f"Token {token}"})
                resp = conn.getresponse()
                body = resp.read()
                ok = resp.status == 200 and len(json.loads(body)["results"]) > 0
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
            dt = time.perf_counter() - t0
            if ok:
                mine.append(dt)
            else:
                with lock:
                    errors[0] += 1
            page = page % pages + 1
            if think:
                time.sleep(rnd.uniform(0.5 * think, 1.5 * think))
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0]


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def measure(db: str, args, think_ms: float) -> dict:
    """One measurement on a fresh database: populate, count the queries, serve, load. Its figures."""
    import django
    from django.apps import apps

    if apps.ready:
        from django.db import connections

        connections.close_all()  # the previous measurement's: its database is dropped next
    env, started_pg = setup_env(db)
    if apps.ready:  # --compare: the next measurement, maybe on the other backend
        _reconfigure(env)
    else:
        django.setup()
    from _common import check_port_free, fail, gunicorn, stop, wait_http

    web = None
    try:
        t0 = time.monotonic()
        token = populate(args.templates)
        print(f"db={db}: {args.templates} templates, {2 * args.templates} disks and volumes, "
              f"{args.templates} jobs written in {time.monotonic() - t0:.1f}s", flush=True)
        pages = (args.templates + 49) // 50
        counts = queries_per_page(token, [1, pages // 2, pages])
        print(f"SQL queries per page (page_size 50) at pages {list(counts)}: {list(counts.values())}")
        check_port_free("127.0.0.1", PORT)
        web = gunicorn(f"127.0.0.1:{PORT}", workers=args.workers, threads=args.threads,
                       env={**os.environ, **env})
        wait_http(f"http://127.0.0.1:{PORT}/api/")
        load(token, 4, 2, pages, 0)  # warm every worker (imports, connections)
        lat, errors = load(token, args.clients, args.seconds, pages, think_ms / 1000)
        if not lat:
            fail(f"no request succeeded ({errors} errors)")
        if args.quick and errors:
            fail(f"{errors} of {errors + len(lat)} requests failed")
        ms = [x * 1000 for x in lat]
        print(f"gunicorn: {args.workers} workers x {args.threads} threads (gthread); {args.clients} clients, "
              f"{args.seconds:.0f}s, think {think_ms:.0f} ms; {os.cpu_count()} CPUs; load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"requests={len(ms)} errors={errors} throughput={len(ms) / args.seconds:.0f}/s "
              f"p50={pct(ms, 50):.1f}ms p90={pct(ms, 90):.1f}ms p99={pct(ms, 99):.1f}ms max={max(ms):.1f}ms "
              f"mean={statistics.mean(ms):.1f}ms")
        print(f"queries_per_page={max(counts.values())} constant={len(set(counts.values())) == 1}", flush=True)
        return {"db": db, "think_ms": think_ms, "p50": pct(ms, 50), "p99": pct(ms, 99), "rps": len(ms) / args.seconds,
                "errors": errors, "queries": max(counts.values()), "constant": len(set(counts.values())) == 1}
    finally:
        stop(web)
        if started_pg:
            subprocess.run([str(ROOT / "scripts" / "services.sh"), "stop"], capture_output=True)


def _reconfigure(env: dict) -> None:
    """Point this process's Django at ``env``'s database (--compare switches backends in one process)."""
    from django.conf import settings
    from django.db import connections

    connections.close_all()
    if env.get("VMSEAL_DB_ENGINE") == "postgresql":
        db = {"ENGINE": "django.db.backends.postgresql", "NAME": env["VMSEAL_DB_NAME"], "USER": env["VMSEAL_DB_USER"],
              "PASSWORD": "", "HOST": env["VMSEAL_DB_HOST"], "PORT": env["VMSEAL_DB_PORT"]}
    else:
        db = {"ENGINE": "vmseal.private_sqlite3", "NAME": str(DATA / "vmseal.sqlite3"),
              "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE",
                          "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}}
    settings.DATABASES["default"] = db
    connections.settings = connections.configure_settings(settings.DATABASES)
    for alias in list(connections):
        del connections[alias]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--compare", action="store_true", help="both backends, at --think-ms and back to back")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--templates", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--think-ms", type=float, default=1000)
    ap.add_argument("--quick", action="store_true", help="small counts, a few seconds: a check that the bench works")
    args = ap.parse_args()
    if args.quick:
        args.templates, args.clients, args.seconds, args.think_ms = 200, 4, 3, 100
    if not args.compare:
        r = measure(args.db, args, args.think_ms)
        print(f"p99_ms={r['p99']:.0f}")
        return
    results = {}
    for db in ("sqlite", "postgresql"):
        for think in (args.think_ms, 0):
            print(f"== {db}, think {think:.0f} ms", flush=True)
            results[db, think] = measure(db, args, think)
    print(f"== summary ({args.clients} clients, {args.seconds:.0f}s each, {args.templates} templates)")
    for (db, think), r in results.items():
        print(f"{db:10} think {think:5.0f} ms: p50={r['p50']:.1f}ms p99={r['p99']:.1f}ms throughput={r['rps']:.0f}/s "
              f"errors={r['errors']} queries_per_page={r['queries']} constant={r['constant']}")
    ratio = results["postgresql", args.think_ms]["p99"] / results["sqlite", args.think_ms]["p99"]
    print(f"pg_sqlite_p99_ratio={ratio:.2f} saturation_p99_ms_sqlite={results['sqlite', 0]['p99']:.0f} "
          f"saturation_p99_ms_pg={results['postgresql', 0]['p99']:.0f}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
