"""The audit trail and event webhooks against real processes: a real test host, the app's callback
server, the real qcluster (restarted with short webhook retries: 3 tries, 1 s backoff) and a webhook
receiver that is its own process on loopback (tests/utils/receiver.py).

Templates are made from the three entry points (API, admin, CLI) and one whose VM disappears before its
worker starts (its flow fails); one is deleted. Each action leaves exactly one audit event with the right
user; each event (template.ok x3, template.failed, job.failed, template.deleted) reaches the receiver
exactly once with a valid signature. A receiver that is down and then up gets its delivery on a retry; one
that answers 500 forever is given up after the 3 tries, recorded."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.utils.api import add_host, superuser_api
from tests.utils.jobs import wait_jobs
from tests.utils.paths import ROOT

pytestmark = pytest.mark.e2e
WEBHOOK_ENV = {"VMSEAL_WEBHOOK_TRIES": "3", "VMSEAL_WEBHOOK_BACKOFF": "1", "VMSEAL_WEBHOOK_TIMEOUT": "3"}
SECRET = "e2e-webhook-secret-0123456789"
TEMPLATE_EVENTS = ["template.ok", "template.failed", "template.deleted", "job.failed"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """tests/utils/receiver.py as its own process; ``requests()`` reads what it received."""

    def __init__(self, port: int, mode: str, log: Path):
        self.port, self.mode, self.log, self.proc = port, mode, log, None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self):
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "utils" / "receiver.py"), str(self.port),
                                      self.mode, str(self.log)], stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        assert self.proc.stdout.readline().strip() == "ready"
        return self

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def requests(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


def signed_ok(req: dict, secret: str) -> bool:
    """The callbacks' scheme: HMAC-SHA256(secret, "<ts>.<nonce>." + body), a fresh timestamp."""
    h = req["headers"]
    expected = hmac.new(secret.encode(), f"{h['X-Vmseal-Timestamp']}.{h['X-Vmseal-Nonce']}.".encode()
                        + req["body"].encode(), hashlib.sha256).hexdigest()
    return (hmac.compare_digest(expected, h["X-Vmseal-Signature"]) and abs(time.time() - int(h["X-Vmseal-Timestamp"]))
            < 300 and h["X-Vmseal-Nonce"] == h["X-Vmseal-Delivery"])


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not after {timeout}s")


@pytest.fixture(scope="module")
def cluster(qcluster):
    """The session's qcluster, stopped while the module sets up, then run with short webhook retries."""
    qcluster.stop()
    env = qcluster.env
    qcluster.env = {**env, **WEBHOOK_ENV}
    try:
        yield qcluster
    finally:
        qcluster.stop()
        qcluster.env = env
        qcluster.start()


@pytest.fixture(scope="module")
def made(cluster, test_host, callback_server, tmp_path_factory, django_db_blocker):
    """Webhook, host, and four templates requested while the qcluster is stopped (one from each entry point,
    and one whose VM is undefined before its worker starts); then the qcluster runs them; one is deleted."""
    from django.core.management import call_command
    from django.test import Client

    from hostjobs import transport
    from hostjobs.models import Host
    from templates.models import Template
    from webhooks.models import Webhook

    tmp = tmp_path_factory.mktemp("webhooks")
    receiver = Receiver(free_port(), "ok", tmp / "main.log").start()
    with django_db_blocker.unblock():
        user, api = superuser_api("wh")
        try:
            r = api.post("/api/webhooks/", {"name": "wh-main", "url": receiver.url, "events": TEMPLATE_EVENTS,
                                            "secret": SECRET}, format="json")
            assert r.status_code == 201, r.content
            host = add_host(api, test_host, "wh", "/var/lib/vmseal/wh")
            call_command("host_install", "wh", stdout=io.StringIO())
            for vm in ("wh-api", "wh-admin", "wh-cli", "wh-fail"):
                test_host.define_vm(vm, "blank")
            ops = {}
            for name in ("wh-api", "wh-fail"):
                r = api.post("/api/templates/", {"name": name, "host": host.pk, "vm": name}, format="json")
                assert r.status_code == 202, r.content
                ops[name] = r.json()["id"]
            admin = Client()
            admin.force_login(user)
            r = admin.post("/admin/templates/template/add/",
                           {"host": host.pk, "vm_name": "wh-admin", "name": "wh-admin", "description": ""})
            assert r.status_code == 302, r.content.decode()[-2000:]
            call_command("template_create", "--host", "wh", "--vm", "wh-cli", "--name", "wh-cli", stdout=io.StringIO())
            for name in ("wh-admin", "wh-cli"):
                ops[name] = str(Template.objects.get(name=name).job_id)
            ids = {name: Template.objects.get(name=name).pk for name in ops}
            test_host.virsh("undefine", "wh-fail")  # gone before its worker looks again
            cluster.start()
            jobs = wait_jobs(api, list(ops.values()), timeout=300)
            r = api.delete(f"/api/templates/{ids['wh-api']}/")
            assert r.status_code == 202, r.content
            jobs.update(wait_jobs(api, [r.json()["id"]], timeout=120))
            yield SimpleNamespace(api=api, user=user, host=host, ops=ops, ids=ids, jobs=jobs, receiver=receiver,
                                  tmp=tmp)
        finally:
            receiver.stop()
            Webhook.objects.filter(name__startswith="wh-").update(active=False)
            for h in Host.objects.all():
                transport.close(h)


def test_each_entry_point_records_its_template_creation_once_with_its_user(made, dbx):
    from audit.cli import os_user
    from audit.models import Event

    assert {name: made.jobs[op]["status"] for name, op in made.ops.items()} == {
        "wh-api": "done", "wh-admin": "done", "wh-cli": "done", "wh-fail": "failed"}
    for name, who in (("wh-api", ("wh", "api")), ("wh-admin", ("wh", "admin")), ("wh-cli", (os_user(), "cli")),
                      ("wh-fail", ("wh", "api"))):
        found = list(Event.objects.filter(action="template.create", object_repr=name))
        assert len(found) == 1, [str(e) for e in found]
        e = found[0]
        assert (e.username, e.source, e.outcome, e.object_type, e.object_id) == (
            *who, "accepted", "template", str(made.ids[name]))
        assert e.request_id
    install = list(Event.objects.filter(action="host.install", object_id=str(made.host.pk)))
    assert [(e.username, e.source, e.outcome) for e in install] == [(os_user(), "cli", "accepted")]
    created = list(Event.objects.filter(action="host.create", object_id=str(made.host.pk)))
    assert [(e.username, e.source, e.outcome) for e in created] == [("wh", "api", "accepted")]
    deleted = list(Event.objects.filter(action="template.delete", object_id=str(made.ids["wh-api"])))
    assert [(e.username, e.source, e.outcome) for e in deleted] == [("wh", "api", "accepted")]
    # nothing else by a user about these templates (the sweeper may have resumed one, as "system")
    mine = Event.objects.filter(object_type="template", object_id__in=[str(i) for i in made.ids.values()])
    assert mine.exclude(source="system").count() == 5
    assert set(mine.filter(source="system").values_list("username", "action")) <= {("system", "template.resume")}


def test_each_event_reaches_the_receiver_once_with_a_valid_signature(made, dbx):
    from webhooks.models import Delivery

    ids = made.ids
    fail_op = made.ops["wh-fail"]
    want = {("template.ok", ids["wh-api"]), ("template.ok", ids["wh-admin"]), ("template.ok", ids["wh-cli"]),
            ("template.failed", ids["wh-fail"]), ("job.failed", fail_op), ("template.deleted", ids["wh-api"])}

    def received():
        return [(r, json.loads(r["body"])) for r in made.receiver.requests()]

    def mine():
        return [(b["event"], b["object"]["id"]) for _, b in received() if (b["event"], b["object"]["id"]) in want]

    wait_for(lambda: set(mine()) == want, 60, "every event delivered")
    time.sleep(3)  # a duplicate would arrive meanwhile
    assert sorted(mine(), key=str) == sorted(want, key=str), "each event exactly once"
    for req, body in received():
        assert signed_ok(req, SECRET), req["headers"]
        assert req["headers"]["X-Vmseal-Event"] == body["event"]
        assert req["headers"]["Content-Type"] == "application/json"
    by_event = {(b["event"], b["object"]["id"]): b for _, b in received()}
    ok = by_event[("template.ok", ids["wh-cli"])]
    assert ok["object"] == {"type": "template", "id": ids["wh-cli"], "repr": "wh-cli"}
    assert ok["data"]["status"] == "ok"
    assert ok["data"]["host"] == made.host.pk
    failed = by_event[("job.failed", fail_op)]["data"]
    assert failed["status"] == "failed"
    assert failed["target"] == f"template:{ids['wh-fail']}"
    tfailed = by_event[("template.failed", ids["wh-fail"])]["data"]
    assert (tfailed["name"], tfailed["status"]) == ("wh-fail", "failed")
    assert tfailed["error"].startswith("CREATE_TEMPLATE failed: no VM")
    assert SECRET not in made.receiver.log.read_text()
    rows = Delivery.objects.filter(webhook__name="wh-main")
    assert {(d.status, d.tries, d.last_status) for d in rows} == {("delivered", 1, 204)}


def test_a_receiver_down_then_up_gets_it_on_a_retry_and_one_failing_forever_is_given_up(made, dbx):
    from webhooks import events
    from webhooks.models import Delivery, Webhook

    down = Receiver(free_port(), "ok", made.tmp / "down.log")  # not started yet: connections are refused
    err = Receiver(free_port(), "500", made.tmp / "err.log").start()
    try:
        for name, rcv in (("wh-down", down), ("wh-500", err)):
            Webhook.objects.create(name=name, url=rcv.url, events=["vm.created"], secret=SECRET)
        sent = {d.webhook.name: d.pk for d in events.emit("vm.created", {"type": "vm", "id": 41, "repr": "vm41"},
                                                          name="vm41")}
        assert set(sent) == {"wh-down", "wh-500"}

        first = wait_for(lambda: Delivery.objects.filter(pk=sent["wh-down"], tries=1, status="pending").first(), 30,
                         "the first try to the receiver that is down")
        assert "Connection refused" in first.last_error or "ConnectionRefused" in first.last_error
        assert first.next_try is not None
        down.start()
        done = wait_for(lambda: Delivery.objects.filter(pk=sent["wh-down"], status="delivered").first(), 120,
                        "the retry to the receiver that is up again")
        assert (done.tries, done.last_status) == (2, 204)
        assert len(down.requests()) == 1
        assert signed_ok(down.requests()[0], SECRET)

        gave_up = wait_for(lambda: Delivery.objects.filter(pk=sent["wh-500"], status="failed").first(), 150,
                           "the 500 receiver's delivery given up")
        assert (gave_up.tries, gave_up.last_status) == (3, 500)
        assert gave_up.last_error.startswith("given up after 3 tries; last: HTTP 500")
        time.sleep(2)
        tries = err.requests()
        assert len(tries) == 3, "exactly the documented tries"
        assert all(signed_ok(t, SECRET) for t in tries)
        assert {t["headers"]["X-Vmseal-Delivery"] for t in tries} == {str(sent["wh-500"])}
        stamps = [int(t["headers"]["X-Vmseal-Timestamp"]) for t in tries]
        assert stamps[1] - stamps[0] >= 1
        assert stamps[2] - stamps[1] >= 2  # backoff 1 s, then 2 s (at least)
    finally:
        down.stop()
        err.stop()
