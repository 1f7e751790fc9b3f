"""Hostile input and SSH trust on a real test host: hostile labels go through whole flows and are
never executed nor used as paths; the write endpoints fuzzed (no 5xx, no partial rows); a host whose
SSH key changed is refused, never re-pinned; the same name raced by two clients; no secret in any log
or job row."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import threading

import pytest

from tests.fixtures.testhosts import down, up
from tests.utils.jobs import wait_jobs
from tests.utils.paths import ROOT, TESTHOSTS

pytestmark = [pytest.mark.e2e, pytest.mark.security]
POOL = "/var/lib/vmseal/security"
UUID_FILE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.(qcow2|meta)$")
LABELS = [  # accepted as names (labels), never executed, never a path
    "x'; touch /tmp/vmseal-pwned-e1; echo '",
    '$(touch /tmp/vmseal-pwned-e2)',
    "`touch /tmp/vmseal-pwned-e3`",
    "a;b|c&d>e<f && touch /tmp/vmseal-pwned-e4",
    "../../../../etc/passwd",
    "\u202eevil\u202d ünïcödé 名前",
]


@pytest.fixture(scope="module")
def sec(test_host, qcluster, callback_server, django_db_blocker):
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    from hostjobs import transport
    from hostjobs.models import Host

    with django_db_blocker.unblock():
        user = User.objects.create_superuser("sec", "sec@example.test", "sec-pass-1")
        token = Token.objects.create(user=user).key
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        r = api.post("/api/hosts/", {"name": "sec1", "address": test_host.address, "host_key": test_host.host_key,
                                     "pool_path": POOL}, format="json")
        assert r.status_code == 201, r.content
        test_host.define_vm("sec1", "one")
        try:
            yield {"api": api, "token": token, "host": Host.objects.get(pk=r.json()["id"]), "user": user}
        finally:
            for h in Host.objects.all():
                transport.close(h)


def test_hostile_labels_go_through_whole_flows_stored_verbatim_and_never_executed(sec, test_host, django_db_blocker):
    api, host = sec["api"], sec["host"]
    with django_db_blocker.unblock():
        posted = [api.post("/api/templates/", {"name": name, "description": f"{name}\n; rm -rf / #\r\n$(id)",
                                               "host": host.pk, "vm": "sec1", "seal": False}, format="json")
                  for name in LABELS]
        assert [p.status_code for p in posted] == [202] * len(LABELS), [p.content for p in posted]
        jobs = wait_jobs(api, [p.json()["id"] for p in posted], timeout=300)
        assert all(j["status"] == "done" for j in jobs.values()), [j["error"] for j in jobs.values()]
        stored = {t["name"]: t for t in api.get("/api/templates/?page_size=500").json()["results"]}
        for name in LABELS:
            assert name in stored, name
            detail = api.get(f"/api/templates/{stored[name]['id']}/").json()
            assert detail["description"] == f"{name}\n; rm -rf / #\r\n$(id)"
            for d in detail["disks"]:
                path = d["volume"]["path"]
                assert path.startswith(POOL + "/")
                assert UUID_FILE.match(path.rsplit("/", 1)[1]), path
    pool = test_host.pool_files(POOL)
    assert len(pool) == 2 * len(LABELS)  # one volume + its .meta each
    assert all(UUID_FILE.match(n) for n in pool), pool
    # the test host shares this machine's /tmp: nothing ran, here or there
    assert not glob.glob("/tmp/vmseal-pwned-*")
    assert test_host.exec("sh", "-c", "ls /tmp/vmseal-pwned-* 2>/dev/null || true").stdout == ""


def test_hostile_vm_names_are_looked_up_never_executed(sec, django_db_blocker):
    api, host = sec["api"], sec["host"]
    with django_db_blocker.unblock():
        # (surrounding whitespace is trimmed, as for every text field: " sec1\n" names sec1)
        for vm in ("sec1; touch /tmp/vmseal-pwned-v1", "$(touch /tmp/vmseal-pwned-v2)", "../sec1", "sec1\x00x",
                   "sec1\nsec2", "*", "sec?"):
            r = api.post("/api/templates/", {"name": "v", "host": host.pk, "vm": vm}, format="json")
            assert r.status_code == 400, r.content
            assert "vm" in r.json()
    assert not glob.glob("/tmp/vmseal-pwned-*")


def test_fuzzing_the_write_endpoints_gives_no_5xx_and_no_partial_rows(sec, django_db_blocker, monkeypatch):
    """schemathesis generates requests for every write operation of the OpenAPI schema and sends them
    to the app in process (WSGI), authenticated; a bounded number of cases per operation. Operations on
    one object (``{id}``) are pinned to decoys made for this test, so the fuzzer never changes or deletes
    the rows of other tests, and no host it may re-address is ever contacted."""
    import schemathesis
    from django.core.wsgi import get_wsgi_application
    from hypothesis import HealthCheck, given, settings
    from rest_framework.throttling import ScopedRateThrottle

    from hostjobs.models import Host, HostJob, JobAction
    from templates.models import Template, TemplateDisk
    from vms.models import Vm
    from volumes.models import Volume
    from webhooks.models import Webhook

    # deep cases, not 429s: the throttle has its own test
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"template_create": "100000/min"})
    headers = {"Authorization": f"Token {sec['token']}"}
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK"
    with django_db_blocker.unblock():
        templates_before = Template.objects.count()
        # decoys on addresses of our own bridge where nothing listens
        decoy_host = Host.objects.create(name="fuzz-decoy", address="10.211.0.250", host_key=key)
        quiet_host = Host.objects.create(name="fuzz-decoy-t", address="10.211.0.251", host_key=key)
        decoy_tpl = Template.objects.create(name="fuzz-decoy", host=quiet_host, vm_name="none", status="ok",
                                            phase="DONE")
        decoy_job = HostJob.create(quiet_host, JobAction.CREATE_TEMPLATE)
        decoy_job.start()
        decoy_job.end("done")
        # a VM row of no domain on the real test host: a delete asks the host for its state, finds no
        # domain and deletes nothing of anyone's (it has no volumes)
        decoy_vm = Vm.objects.create(name="fuzz-decoy-vm", host=sec["host"], status="ok", phase="DONE")
        hook = "http://10.211.0.1:9/fuzz"  # every webhook the fuzzer makes points here: our bridge, nothing listens
        decoy_hook = Webhook.objects.create(name="fuzz-decoy", url=hook, events=["template.ok"], secret="s" * 24)
        hooks_before = set(Webhook.objects.exclude(pk=decoy_hook.pk).values_list("pk", flat=True))
        vms_before = set(Vm.objects.values_list("pk", flat=True))
        hosts_before = set(Host.objects.values_list("pk", flat=True))
        pinned = {"/api/hosts/{id}/": decoy_host.pk, "/api/templates/{id}/": decoy_tpl.pk,
                  "/api/jobs/{id}/cancel/": decoy_job.pk, "/api/vms/{id}/": decoy_vm.pk,
                  "/api/webhooks/{id}/": decoy_hook.pk}
        # bodies pinned where a fuzzed value would reach beyond this test: a VM only ever from the decoy
        # template (it has no recorded hardware: refused before anything is made), a webhook only to `hook`
        body_pins = {"/api/vms/": {"template": decoy_tpl.pk}, "/api/webhooks/": {"url": hook},
                     "/api/webhooks/{id}/": {"url": hook}}
        schema = schemathesis.from_wsgi("/api/schema/?format=json", get_wsgi_application(), headers=headers)
        ops = [r.ok() for r in schema.get_all_operations()]
        writes = [op for op in ops if op.method.upper() in ("POST", "PUT", "PATCH", "DELETE")]
        assert all(op.path in pinned for op in writes if "{" in op.path), [op.path for op in writes]
        # Host changes last: a fuzzed template request can then only name a host that existed before
        # (the test host), so nothing ever connects to an address the fuzzer made up.
        writes.sort(key=lambda op: op.path.startswith("/api/hosts/"))
        tried, statuses = {}, {}

        def fuzz(op):
            name = f"{op.method.upper()} {op.path}"
            strategy = op.as_strategy()
            if op.path in pinned:
                strategy = strategy.map(lambda case: _pin(case, pinned[op.path]))
            if op.path in body_pins:
                strategy = strategy.map(lambda case: _pin_body(case, body_pins[op.path]))

            @settings(max_examples=40, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def check(case):
                response = case.call_wsgi(headers=headers)
                tried[name] = tried.get(name, 0) + 1
                statuses.setdefault(name, set()).add(response.status_code)
                assert response.status_code < 500, (name, case.body, response.data[:500])

            check()

        for op in writes:
            fuzz(op)
        summary = {k: {"cases": tried[k], "statuses": sorted(statuses[k])} for k in tried}
        (ROOT / "test-artifacts").mkdir(exist_ok=True)
        (ROOT / "test-artifacts" / "fuzz-summary.json").write_text(json.dumps(summary, indent=1))
        print("fuzzed:", json.dumps(summary))
        assert sum(tried.values()) >= 100
        assert {"POST /api/templates/", "POST /api/hosts/", "DELETE /api/templates/{id}/",
                "POST /api/jobs/{id}/cancel/", "POST /api/vms/", "DELETE /api/vms/{id}/", "POST /api/webhooks/",
                "PATCH /api/webhooks/{id}/"} <= set(tried)
        # no partial rows
        assert Template.objects.exclude(pk=decoy_tpl.pk).count() == templates_before, "no fuzzed request " \
            "named an existing VM"
        assert not Template.objects.filter(job__isnull=True).exclude(pk=decoy_tpl.pk).exists()
        assert not TemplateDisk.objects.exclude(template__in=Template.objects.all()).exists()
        assert not Volume.objects.filter(disk__isnull=True, host__in=Host.objects.exclude(pk__in=hosts_before)).exists()
        assert not HostJob.objects.filter(action="create_template", status="pending",
                                          template__isnull=True).exists()
        assert set(Vm.objects.values_list("pk", flat=True)) <= vms_before, "no fuzzed request made a VM"
        assert set(Webhook.objects.exclude(url=hook).values_list("pk", flat=True)) <= hooks_before
        Webhook.objects.exclude(pk__in=hooks_before).delete()
        Vm.objects.filter(pk=decoy_vm.pk).delete()
        Host.objects.exclude(pk__in=hosts_before).delete()
        decoy_host.delete()


def _pin(case, pk):
    case.path_parameters = {**(case.path_parameters or {}), "id": pk}
    return case


def _pin_body(case, values):
    if isinstance(case.body, dict):
        case.body = {**case.body, **values}
    return case


def test_a_host_whose_ssh_key_changed_is_refused_and_never_repinned(sec, django_db_blocker):
    from hostjobs import transport
    from hostjobs.models import Host, HostJob
    from hostjobs.transport import app_public_key
    from templates.models import Template

    name = f"vmseal-k{os.getpid()}"
    h = up(name)
    try:
        h.authorize(app_public_key())
        h.define_vm("keyvm", "one")
        api = sec["api"]
        with django_db_blocker.unblock():
            r = api.post("/api/hosts/", {"name": "rekeyed", "address": h.address, "host_key": h.host_key},
                         format="json")
            assert r.status_code == 201
            row = Host.objects.get(pk=r.json()["id"])
            assert api.get(f"/api/hosts/{row.pk}/vms/").status_code == 200, "reachable with the pinned key"
            transport.close(row)
            # the host gets a new SSH host key (reinstalled, or someone in the middle)
            ssh_dir = h.authorized_keys.parent
            pid = int((ssh_dir / "sshd.pid").read_text())
            os.kill(pid, 15)
            for f in ssh_dir.glob("ssh_host_ed25519_key*"):
                f.unlink()
            subprocess.run([*TESTHOSTS, "up", name], check=True, capture_output=True)
            new_key = (ssh_dir / "ssh_host_ed25519_key.pub").read_text().strip()
            assert new_key.split()[1] != h.host_key.split()[1]
            before = (Template.objects.count(), HostJob.objects.count())
            r = api.post("/api/templates/", {"name": "via-new-key", "host": row.pk, "vm": "keyvm"}, format="json")
            assert r.status_code == 400
            assert "pinned host key" in r.json()["host"][0]
            r = api.get(f"/api/hosts/{row.pk}/vms/")
            assert r.status_code == 502
            assert "pinned host key" in r.json()["detail"]
            assert (Template.objects.count(), HostJob.objects.count()) == before
            row.refresh_from_db()
            assert row.host_key.split()[:2] == h.host_key.split()[:2], "never re-pinned"
            known = (transport.SSHTarget.of(row).dir / "known_hosts").read_text()
            assert new_key.split()[1] not in known
            out = subprocess.run([sys.executable, str(ROOT / "manage.py"), "host_check",
                                  "rekeyed"], capture_output=True, text=True,
                                 env={**os.environ, "VMSEAL_DB_NAME": _db_name()})
            assert out.returncode != 0
            assert "pinned host key" in out.stdout + out.stderr
            row.delete()
    finally:
        down(name)


def _db_name():
    from django.db import connection

    return str(connection.settings_dict["NAME"])


def test_the_same_name_raced_by_two_clients_makes_one_template(sec, django_db_blocker):
    from django.db import connection
    from rest_framework.test import APIClient

    from templates.models import Template

    host, results = sec["host"], []
    barrier = threading.Barrier(2)

    def client():
        try:
            api = APIClient()
            api.force_authenticate(sec["user"])
            barrier.wait()
            results.append(api.post("/api/templates/", {"name": "raced", "host": host.pk, "vm": "sec1"},
                                    format="json"))
        finally:
            connection.close()

    with django_db_blocker.unblock():
        threads = [threading.Thread(target=client) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r.status_code for r in results) == [202, 400], [r.content for r in results]
        refused = next(r for r in results if r.status_code == 400)
        assert "already exists" in refused.json()["name"][0]
        assert Template.objects.filter(name="raced").count() == 1
        accepted = next(r for r in results if r.status_code == 202)
        job = wait_jobs(sec["api"], [accepted.json()["id"]], timeout=300)[accepted.json()["id"]]
        assert job["status"] == "done"


def test_no_secret_is_in_any_log_or_job_row(sec, django_db_blocker):
    """After this session's flows: the hosts' callback secrets and the app's private key appear in no
    job row and no log of the app processes."""
    from django.conf import settings

    from hostjobs.models import Host, HostJob

    private = settings.VMSEAL_SSH_KEY.read_text()
    key_lines = [ln for ln in private.splitlines() if ln and not ln.startswith("-----")]
    with django_db_blocker.unblock():
        secrets = [h.callback_secret for h in Host.objects.all()]
        rows = [json.dumps([j.log, j.error, j.description, j.result]) for j in HostJob.objects.all()]
    assert rows
    assert secrets
    logs = [p.read_text(errors="replace") for p in (ROOT / "var").glob("*.log")]
    assert logs
    for text in rows + logs:
        for s in secrets:
            assert s not in text
        for ln in key_lines:
            assert ln not in text
