"""GET /metrics: who may read it, and what it says, read from the database (and, for the callbacks the
web workers answer, from prometheus_client's multiprocess files)."""

from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hostjobs.models import HostJob, JobAction
from tests.fixtures.templates import create_template
from tests.utils.users import user_with

pytestmark = pytest.mark.security


def scrape(client, **extra) -> dict[tuple, float]:
    r = client.get("/metrics", **extra)
    assert r.status_code == 200, r.content
    assert r["Content-Type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.content.decode()) for s in fam.samples}


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def token_for(user) -> dict:
    from rest_framework.authtoken.models import Token

    return {"HTTP_AUTHORIZATION": f"Token {Token.objects.create(user=user).key}"}


# -- who may read it --------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_no_credentials_is_a_401(client):
    r = client.get("/metrics")
    assert r.status_code == 401
    assert b"vmseal_" not in r.content


@pytest.mark.django_db
def test_a_token_without_view_metrics_is_a_403_even_for_staff_with_every_other_permission(client):
    from django.contrib.auth.models import Permission

    user = user_with("ops", staff=True)
    user.user_permissions.set(Permission.objects.exclude(codename="view_metrics"))
    r = client.get("/metrics", **token_for(user))
    assert r.status_code == 403
    assert b"vmseal_" not in r.content


@pytest.mark.django_db
def test_a_wrong_token_is_a_401(client):
    r = client.get("/metrics", HTTP_AUTHORIZATION="Token " + "0" * 40)
    assert r.status_code == 401


@pytest.mark.django_db
def test_a_token_with_view_metrics_reads_them(client):
    samples = scrape(client, **token_for(user_with("prom", "view_metrics")))
    assert ("vmseal_templates", (("status", "ok"),)) in samples


@pytest.mark.django_db
def test_the_allow_list_admits_its_addresses_only_by_the_peer_address(client, settings):
    settings.VMSEAL_METRICS_ALLOW = ["10.20.0.0/16", "192.0.2.7"]
    assert client.get("/metrics", REMOTE_ADDR="10.20.3.4").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.7").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.8").status_code == 401
    # a forwarded-for header naming an allowed address is not believed
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="10.20.3.4").status_code == 401


def test_a_malformed_allow_list_stops_the_settings_from_loading(tmp_path):
    import os
    import subprocess
    import sys

    from tests.utils.paths import ROOT

    env = {**os.environ, "VMSEAL_DATA_DIR": str(tmp_path / "data"), "VMSEAL_METRICS_ALLOW": "10.0.0.0/8,not-an-ip"}
    r = subprocess.run([sys.executable, "-c", "import vmseal.settings"], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    assert r.returncode != 0
    assert "not-an-ip" in r.stderr


def test_the_counter_directory_is_private(settings):
    import stat

    mode = stat.S_IMODE(settings.VMSEAL_METRICS_DIR.stat().st_mode)
    assert mode == 0o700
    import os

    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(settings.VMSEAL_METRICS_DIR)


def test_the_metrics_endpoint_is_not_in_the_api_schema(admin_client):
    assert "/metrics" not in admin_client.get("/api/schema/?format=json").json()["paths"]


# -- what it says ---------------------------------------------------------------------------------------

@pytest.fixture
def reader(db):
    return token_for(user_with("prom", "view_metrics"))


def test_templates_jobs_and_slots_are_counted_from_the_database(client, reader, host, other_host):
    from django.utils import timezone

    create_template(host, "a")
    create_template(host, "b", status="locked", phase="SEAL")
    create_template(other_host, "c", status="failed", phase="DONE")
    op = HostJob.create(host, JobAction.CREATE_TEMPLATE)
    op.start()
    seal = HostJob.create(host, JobAction.SEAL, parent=op)
    seal.start()
    HostJob.create(host, JobAction.SEAL, parent=op)  # pending: waiting holds a slot too (runner.reserve)
    copy = HostJob.create(host, JobAction.COPY, parent=op)
    copy.start()
    copy.end("done")
    t0 = timezone.now()
    HostJob.objects.filter(pk=copy.pk).update(started=t0 - timedelta(seconds=7), completed=t0)
    failed = HostJob.create(other_host, JobAction.COPY)
    failed.start()
    failed.end("failed", "boom")
    HostJob.objects.filter(pk=failed.pk).update(started=t0 - timedelta(seconds=0.2), completed=t0)
    host.last_check, host.last_checked = {"reachable": True, "pool_free_bytes": 123456789}, t0
    host.max_parallel_seals = 3
    host.save()
    other_host.last_check, other_host.last_checked = {"reachable": False, "error": "ssh: timeout"}, t0
    other_host.save()

    s = scrape(client, **reader)
    assert value(s, "vmseal_templates", status="ok") == 1
    assert value(s, "vmseal_templates", status="locked") == 1
    assert value(s, "vmseal_templates", status="failed") == 1
    from templates.models import TemplateStatus

    assert {("vmseal_templates", (("status", v),)) for v in TemplateStatus.values} <= set(s)
    from vms.states import VmStatus

    assert {("vmseal_vms", (("status", v),)) for v in VmStatus.values} <= set(s), "VMs by status, zeros too"
    assert value(s, "vmseal_vms", status="ok") == 0
    assert value(s, "vmseal_jobs", kind="operation", action="create_template", status="running") == 1
    assert value(s, "vmseal_jobs", kind="virt", action="seal", status="running") == 1
    assert value(s, "vmseal_jobs", kind="virt", action="seal", status="pending") == 1
    assert value(s, "vmseal_jobs", kind="storage", action="copy", status="done") == 1
    assert value(s, "vmseal_jobs", kind="storage", action="copy", status="failed") == 1
    assert value(s, "vmseal_jobs", kind="storage", action="delete", status="done") == 0
    assert ("vmseal_jobs", (("action", "delete"), ("kind", "storage"), ("status", "done"))) in s, "zeros exported"
    assert value(s, "vmseal_jobs_running", kind="virt", action="seal") == 1
    assert value(s, "vmseal_jobs_running", kind="operation", action="create_template") == 1
    assert value(s, "vmseal_jobs_running", kind="storage", action="copy") == 0
    assert value(s, "vmseal_seal_slots_in_use", host="h") == 2
    assert value(s, "vmseal_seal_slots_in_use", host="h2") == 0
    assert value(s, "vmseal_seal_slots", host="h") == 3
    assert value(s, "vmseal_host_reachable", host="h") == 1
    assert value(s, "vmseal_host_reachable", host="h2") == 0
    assert value(s, "vmseal_host_pool_free_bytes", host="h") == 123456789
    assert ("vmseal_host_pool_free_bytes", (("host", "h2"),)) not in s, "not known: not made up"
    assert value(s, "vmseal_host_last_checked_timestamp_seconds", host="h") == pytest.approx(t0.timestamp())
    # the durations of finished jobs: 7 s (done copy), 0.2 s (failed copy)
    done = {"kind": "storage", "action": "copy", "status": "done"}
    assert value(s, "vmseal_job_duration_seconds_count", **done) == 1
    assert value(s, "vmseal_job_duration_seconds_sum", **done) == pytest.approx(7.0)
    assert value(s, "vmseal_job_duration_seconds_bucket", **done, le="5.0") == 0
    assert value(s, "vmseal_job_duration_seconds_bucket", **done, le="10.0") == 1
    assert value(s, "vmseal_job_duration_seconds_bucket", **done, le="+Inf") == 1
    bad = {"kind": "storage", "action": "copy", "status": "failed"}
    assert value(s, "vmseal_job_duration_seconds_bucket", **bad, le="0.5") == 1
    assert value(s, "vmseal_job_duration_seconds_sum", **bad) == pytest.approx(0.2)
    # running jobs have no duration yet
    assert ("vmseal_job_duration_seconds_count", (("action", "seal"), ("kind", "virt"), ("status", "running"))) \
        not in s


def test_a_scrape_costs_the_same_few_queries_however_many_rows(client, reader, host, django_assert_max_num_queries):
    for i in range(30):
        create_template(host, f"t{i}")
        j = HostJob.create(host, JobAction.COPY)
        j.start()
        j.end("done")
    with django_assert_max_num_queries(9):  # token, jobs, durations, slots, hosts, templates, VMs
        scrape(client, **reader)


def test_callbacks_are_counted_accepted_by_kind_and_refused_by_reason(client, reader, host, host_job):
    from tests.test_callbacks import done, post

    before = scrape(client, **reader)
    assert post(client, done(host_job, host), host.callback_secret).status_code == 200
    assert post(client, done(host_job, host), "0" * 64).status_code == 401  # wrong signature
    assert post(client, done(host_job, host), host.callback_secret, ts="1").status_code == 401  # stale
    assert post(client, {"kind": "bogus", "host": host.pk}, host.callback_secret).status_code == 400
    after = scrape(client, **reader)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("vmseal_callbacks_accepted_total", kind="job") == 1
    assert moved("vmseal_callbacks_refused_total", reason="not_signed") == 1
    assert moved("vmseal_callbacks_refused_total", reason="stale") == 1
    assert moved("vmseal_callbacks_refused_total", reason="unknown_kind") == 1
    assert moved("vmseal_callbacks_refused_total", reason="replayed") == 0


def test_a_status_gauge_for_another_model_is_one_line(client, reader, host):
    """What the vms app will add (metrics.collectors.STATUS_GAUGES); here with hostjobs' HostJob."""
    from metrics import collectors

    create_template(host, "a")
    gauge = collectors.StatusGauge("vmseal_test_jobs", "Jobs by status", "hostjobs.HostJob")
    collectors.STATUS_GAUGES.append(gauge)
    try:
        HostJob.create(host, JobAction.COPY)
        s = scrape(client, **reader)
    finally:
        collectors.STATUS_GAUGES.remove(gauge)
    assert value(s, "vmseal_test_jobs", status="pending") == 1
    assert value(s, "vmseal_test_jobs", status="done") == 0
    assert ("vmseal_test_jobs", (("status", "done"),)) in s


# -- several gunicorn workers ------------------------------------------------------------------------------

def test_counters_from_several_gunicorn_workers_are_summed_and_a_restart_clears_the_old_files(tmp_path, django_db_setup,
                                                                                           django_db_blocker):
    """gunicorn as README "Deploying" runs it (2 workers, -c python:vmseal.gunicorn_conf): refused
    callbacks land in whichever worker took the connection; every scrape, in either worker, counts them all."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request
    from pathlib import Path

    from django.db import connection

    from tests.utils.paths import ROOT

    counters = tmp_path / "metrics"
    counters.mkdir(mode=0o700)
    (counters / "counter_4242.db").write_bytes(b"left by an earlier run")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with django_db_blocker.unblock():
        db_name = str(connection.settings_dict["NAME"])  # the test database, migrated
    env = {**os.environ, "VMSEAL_DATA_DIR": str(tmp_path / "data"), "VMSEAL_METRICS_DIR": str(counters),
           "VMSEAL_METRICS_ALLOW": "127.0.0.1", "VMSEAL_DB_NAME": db_name}
    web = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "-c", "python:vmseal.gunicorn_conf",
                            "vmseal.wsgi:application", "--bind",
                            f"127.0.0.1:{port}", "--workers", "2", "--threads", "2", "--worker-class", "gthread"],
                           cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        def post():
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/callbacks/", data=b"{}", method="POST")
            try:
                urllib.request.urlopen(req, timeout=10)
            except urllib.error.HTTPError as e:
                return e.code

        deadline = time.monotonic() + 30
        while True:
            try:
                assert post() == 401
                break
            except OSError:
                assert time.monotonic() < deadline, "gunicorn did not answer"
                time.sleep(0.2)
        assert not (counters / "counter_4242.db").exists(), "the earlier run's counts were removed at start"
        import threading

        sent, answers = [1], []

        def burst():
            for _ in range(5):
                answers.append(post())

        for _ in range(20):  # concurrent connections, until both workers have taken some
            threads = [threading.Thread(target=burst) for _ in range(12)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            sent[0] += 5 * len(threads)
            if len(list(counters.glob("counter_*.db"))) == 2:
                break
        assert answers == [401] * (sent[0] - 1)
        sent = sent[0]
        assert len(list(counters.glob("counter_*.db"))) == 2, "both workers counted"
        for _ in range(6):  # each scrape on a new connection: either worker
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            got = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for fam in text_string_to_metric_families(text) for s in fam.samples}
            assert got[("vmseal_callbacks_refused_total", (("reason", "not_signed"),))] == sent
    finally:
        os.killpg(web.pid, 15)
        web.wait(20)
