"""Webhooks without a receiver: registering them (validation, permissions, the write-only secret),
what emit() queues and when (on commit only, never contacting a receiver: a slow one never delays the
caller), the deliveries' guarded moves, and the sweeper recorded as "system". Delivery over HTTP, the
retries and giving up run against a real receiver and qcluster in tests/test_e2e_audit_webhooks.py."""

import socket
import time

import pytest
from django.db import transaction
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from hostjobs.errors import InvalidTransition
from tests.utils.users import user_with
from webhooks import events
from webhooks.models import Delivery, Webhook

pytestmark = pytest.mark.django_db
HOOK = {"name": "w", "url": "http://127.0.0.1:9/hook", "events": ["template.ok", "job.failed"],
        "secret": "0123456789abcdef-secret"}


def client_of(user):
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return c


@pytest.mark.parametrize(("field", "value", "says"), [
    ("url", "ftp://127.0.0.1/x", "valid URL"),
    ("url", "http://user:pw@127.0.0.1/x", "no user name or password"),
    ("url", "not a url", "valid URL"),
    ("events", [], "non-empty list"),
    ("events", ["template.ok", "template.ok"], "twice"),
    ("events", ["template.exploded"], "unknown events"),
    ("events", "template.ok", "non-empty list"),
    ("secret", "short", "at least 16"),
])
def test_invalid_webhooks_are_refused_naming_the_field(api, field, value, says):
    r = api.post("/api/webhooks/", {**HOOK, field: value}, format="json")
    assert r.status_code == 400
    assert says in str(r.json()[field])
    assert not Webhook.objects.exists()


def test_the_secret_is_written_never_returned(api):
    r = api.post("/api/webhooks/", HOOK, format="json")
    assert r.status_code == 201, r.content
    assert "secret" not in r.json()
    pk = r.json()["id"]
    assert Webhook.objects.get(pk=pk).secret == HOOK["secret"]
    assert "secret" not in api.get(f"/api/webhooks/{pk}/").json()
    assert api.patch(f"/api/webhooks/{pk}/", {"secret": "another-secret-value-1"}, format="json").status_code == 200
    assert Webhook.objects.get(pk=pk).secret == "another-secret-value-1"
    assert "secret" not in repr(Webhook.objects.get(pk=pk))


def test_webhooks_need_their_permissions_reads_included():
    nobody = client_of(user_with("nobody"))
    assert nobody.get("/api/webhooks/").status_code == 403
    assert nobody.post("/api/webhooks/", HOOK, format="json").status_code == 403
    reader = client_of(user_with("reader", "view_webhook"))
    assert reader.get("/api/webhooks/").status_code == 200
    assert reader.post("/api/webhooks/", HOOK, format="json").status_code == 403
    writer = client_of(user_with("writer", "view_webhook", "add_webhook"))
    assert writer.post("/api/webhooks/", HOOK, format="json").status_code == 201


def test_emit_queues_one_delivery_per_interested_webhook_on_commit_only(django_capture_on_commit_callbacks, host):
    Webhook.objects.create(name="a", url="http://127.0.0.1:9/a", events=["template.ok"], secret="x" * 16)
    Webhook.objects.create(name="b", url="http://127.0.0.1:9/b", events=["job.failed"], secret="x" * 16)
    Webhook.objects.create(name="c", url="http://127.0.0.1:9/c", events=["template.ok"], secret="x" * 16, active=False)
    with django_capture_on_commit_callbacks() as queued:
        made = events.emit("template.ok", host, status="ok")
    assert [d.webhook.name for d in made] == ["a"]
    assert len(queued) == 1
    d = Delivery.objects.get()
    assert (d.status, d.tries, d.event) == ("pending", 0, "template.ok")
    assert d.payload["id"] == str(d.pk)
    assert d.payload["object"] == {"type": "host", "id": host.pk, "repr": "h"}
    assert d.payload["data"] == {"status": "ok"}
    with pytest.raises(ValueError, match="unknown webhook event"):
        events.emit("template.exploded", host)
    a = Webhook.objects.get(name="a")
    rows = api_client_of_superuser().get(f"/api/webhooks/{a.pk}/deliveries/").json()
    assert [(r["id"], r["status"], r["tries"], r["event"]) for r in rows["results"]] == [
        (str(d.pk), "pending", 0, "template.ok")]
    assert "x" * 16 not in str(rows)


def api_client_of_superuser():
    from django.contrib.auth.models import User

    return client_of(User.objects.create_superuser("root2", "r@example.test", "root2-pass-1"))


def test_a_host_scan_that_fails_a_template_sends_template_failed(host):
    from types import SimpleNamespace

    from sealing.reconcile import fail_templates_of_missing
    from tests.fixtures.templates import create_template

    Webhook.objects.create(name="a", url="http://127.0.0.1:9/a", events=["template.failed"], secret="x" * 16)
    t = create_template(host, "gone", disks=1)
    vol = t.disks.get().volume_id
    fail_templates_of_missing(host, SimpleNamespace(missing=[{"id": str(vol), "why": "no data file"}], changed=[]))
    d = Delivery.objects.get()
    assert (d.event, d.payload["object"]["id"], d.payload["data"]["status"]) == ("template.failed", t.pk, "failed")
    assert "found by a host scan" in d.payload["data"]["error"]


def test_an_event_of_a_change_rolled_back_is_never_sent(django_capture_on_commit_callbacks):
    Webhook.objects.create(name="a", url="http://127.0.0.1:9/a", events=["vm.created"], secret="x" * 16)
    with django_capture_on_commit_callbacks() as queued:
        try:
            with transaction.atomic():
                events.emit("vm.created", {"type": "vm", "id": 1, "repr": "v"})
                raise RuntimeError("the change failed")
        except RuntimeError:
            pass
    assert queued == []
    assert not Delivery.objects.exists()


def test_emit_never_contacts_a_receiver_so_a_slow_one_never_delays_the_caller(django_capture_on_commit_callbacks):
    """The receiver accepts connections and never answers; emit (and the on-commit enqueue) return at once
    and it never saw a connection: only a qcluster worker posts."""
    with socket.socket() as slow:
        slow.bind(("127.0.0.1", 0))
        slow.listen(8)
        slow.settimeout(0.5)
        Webhook.objects.create(name="slow", url=f"http://127.0.0.1:{slow.getsockname()[1]}/h", events=["job.failed"],
                               secret="x" * 16)
        started = time.monotonic()
        with django_capture_on_commit_callbacks(execute=True):
            events.emit("job.failed", {"type": "job", "id": "j", "repr": "j"})
        assert time.monotonic() - started < 1.0
        with pytest.raises(TimeoutError):
            slow.accept()
    assert Delivery.objects.get().status == "pending"


def test_a_delivery_moves_only_by_its_guarded_transitions():
    w = Webhook.objects.create(name="a", url="http://127.0.0.1:9/a", events=["vm.created"], secret="x" * 16)
    d = Delivery.objects.create(webhook=w, event="vm.created", payload={})
    other = Delivery.objects.get(pk=d.pk)
    d.claim()
    assert (d.status, d.tries) == ("sending", 1)
    with pytest.raises(InvalidTransition):
        other.claim()  # a second worker with the same try
    with pytest.raises(InvalidTransition):
        d.claim()  # sending -> sending
    d.succeed(204)
    with pytest.raises(InvalidTransition):
        d.give_up("late", 500)
    assert Delivery.objects.get(pk=d.pk).status == "delivered"


def test_the_sweeper_is_recorded_as_system(host):
    from datetime import timedelta

    from django.utils import timezone

    from audit.models import Event
    from sealing.tasks import sweep
    from templates.models import Template
    from tests.fixtures.templates import create_template

    t = create_template(host, "orphan", status="locked", phase="COPY_DISKS")
    Template.objects.filter(pk=t.pk).update(updated=timezone.now() - timedelta(minutes=5))
    assert sweep() == 1
    e = Event.objects.get()
    assert (e.username, e.user_id, e.source, e.action, e.object_id, e.object_repr, e.outcome) == (
        "system", None, "system", "template.resume", str(t.pk), "orphan", "accepted")
