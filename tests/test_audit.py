"""The audit trail: every changing action from the API, the admin and the command line leaves exactly
one event with the right user, source, object and outcome (refusals too, with their reason); every
response carries X-Request-ID; the trail is read through GET /api/events/ (filters, pages, permission)
and the admin, and changed or deleted by no one; no secret ever lands in it. No host is contacted here
(hosts nobody answers on; refusals happen before any host work): tests/test_e2e_audit.py has the actions
that need a real host (template creation, host_install)."""

import json

import pytest
from django.core.management import CommandError, call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from audit.models import Event, ImmutableEvent
from hostjobs.models import Host, HostJob, JobAction
from tests.fixtures.hostjobs import KEY
from tests.fixtures.templates import create_template
from tests.utils.users import user_with

pytestmark = pytest.mark.django_db
HOST = {"name": "h9", "address": "10.211.0.250", "host_key": KEY}


def token_client(user):
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return c


def only(action, **kw) -> Event:
    """The one event of ``action`` (fails if there is none or more than one)."""
    found = list(Event.objects.filter(action=action, **kw))
    assert len(found) == 1, [str(e) for e in found]
    return found[0]


# -- API ----------------------------------------------------------------------------------------------------
def test_api_host_create_update_delete_are_recorded_once_with_the_tokens_user(api, admin_user):
    r = api.post("/api/hosts/", HOST, format="json", HTTP_X_REQUEST_ID="client-req-1")
    assert r.status_code == 201, r.content
    assert r["X-Request-ID"] == "client-req-1"
    pk = r.json()["id"]
    e = only("host.create")
    assert (e.username, e.user_id, e.source, e.outcome, e.object_type, e.object_id, e.object_repr, e.request_id) == (
        "admin", admin_user.pk, "api", "accepted", "host", str(pk), "h9", "client-req-1")

    r = api.patch(f"/api/hosts/{pk}/", {"ssh_user": "ops", "port": 2222}, format="json")
    assert r.status_code == 200, r.content
    e = only("host.update")
    assert (e.outcome, e.object_id, e.changes) == ("accepted", str(pk), ["port", "ssh_user"])
    assert e.request_id == r["X-Request-ID"]
    assert len(e.request_id) == 32

    assert api.delete(f"/api/hosts/{pk}/").status_code == 204
    e = only("host.delete")
    assert (e.outcome, e.object_id, e.object_repr) == ("accepted", str(pk), "h9")
    assert Event.objects.count() == 3


def test_api_refusals_are_recorded_with_their_reason(api, host, template):
    r = api.post("/api/hosts/", {**HOST, "address": "not-an-address"}, format="json")
    assert r.status_code == 400
    e = only("host.create")
    assert e.outcome == "refused"
    assert "address" in e.reason
    assert e.object_id == ""
    assert not Host.objects.filter(name="h9").exists()

    r = api.delete(f"/api/hosts/{host.pk}/")  # it has a template
    assert r.status_code == 409
    e = only("host.delete")
    assert (e.outcome, e.object_id, e.object_repr) == ("refused", str(host.pk), "h")
    assert "still has 1 template" in e.reason

    r = api.post("/api/templates/", {"name": "t", "host": host.pk, "vm": "v"}, format="json")  # the name is taken
    assert r.status_code == 400
    assert only("template.create").outcome == "refused"
    assert "already exists" in only("template.create").reason


def test_api_template_delete_and_job_cancel(api, template, operation):
    r = api.delete(f"/api/templates/{template.pk}/")
    assert r.status_code == 202, r.content
    e = only("template.delete")
    assert (e.outcome, e.object_type, e.object_id, e.object_repr) == ("accepted", "template", str(template.pk), "t")
    r = api.delete(f"/api/templates/{template.pk}/")  # locked by its delete now
    assert r.status_code == 409
    assert Event.objects.filter(action="template.delete", outcome="refused").count() == 1

    assert api.post(f"/api/jobs/{operation.pk}/cancel/").status_code == 202
    e = only("job.cancel")
    assert (e.outcome, e.object_type, e.object_id) == ("accepted", "job", str(operation.pk))
    assert api.post(f"/api/jobs/{operation.pk}/cancel/").status_code == 409  # aborting already
    assert Event.objects.filter(action="job.cancel", outcome="refused", object_id=str(operation.pk)).count() == 1


def test_a_user_without_the_permission_is_refused_and_recorded_as_themselves():
    bob = user_with("bob")
    r = token_client(bob).post("/api/hosts/", HOST, format="json")
    assert r.status_code == 403
    e = only("host.create")
    assert (e.username, e.user_id, e.outcome) == ("bob", bob.pk, "refused")


def test_reads_and_anonymous_requests_record_nothing_but_carry_a_request_id(api):
    r = api.get("/api/hosts/")
    assert r.status_code == 200
    assert r["X-Request-ID"]
    r = APIClient().post("/api/hosts/", HOST, format="json")
    assert r.status_code == 401
    assert r["X-Request-ID"]
    r = api.get("/api/hosts/", HTTP_X_REQUEST_ID="bad id\twith spaces")
    assert r["X-Request-ID"] != "bad id\twith spaces"
    assert len(r["X-Request-ID"]) == 32
    assert api.get("/api/hosts/", HTTP_X_REQUEST_ID="x" * 65)["X-Request-ID"] != "x" * 65
    assert Event.objects.count() == 0


# -- admin ---------------------------------------------------------------------------------------------------
ADMIN_HOST = {"name": "h9", "address": "10.211.0.250", "port": "22", "ssh_user": "root", "host_key": KEY,
              "pool_path": "/var/lib/vmseal/templates", "vm_pool_path": "/var/lib/vmseal/vms",
              "guestfs_backend_settings": "", "callback_url": ""}


def test_admin_host_add_change_delete_and_refusals(admin_client, admin_user):
    r = admin_client.post("/admin/hostjobs/host/add/", {**ADMIN_HOST, "address": "nope"})
    assert r.status_code == 200  # the form again, with its errors
    e = only("host.create")
    assert (e.source, e.username, e.outcome) == ("admin", "admin", "refused")
    assert "address" in e.reason

    r = admin_client.post("/admin/hostjobs/host/add/", ADMIN_HOST)
    assert r.status_code == 302, r.content
    h = Host.objects.get(name="h9")
    e = only("host.create", outcome="accepted")
    assert (e.source, e.username, e.user_id, e.object_id, e.object_repr) == ("admin", "admin", admin_user.pk,
                                                                             str(h.pk), "h9")
    assert e.request_id

    r = admin_client.post(f"/admin/hostjobs/host/{h.pk}/change/", {**ADMIN_HOST, "port": "2222"})
    assert r.status_code == 302, r.content
    e = only("host.update")
    assert (e.outcome, e.changes) == ("accepted", ["port"])

    create_template(h, "busy")
    r = admin_client.post(f"/admin/hostjobs/host/{h.pk}/delete/", {"post": "yes"})
    assert r.status_code == 200
    assert Host.objects.filter(pk=h.pk).exists()
    e = only("host.delete")
    assert e.outcome == "refused"
    assert "still has 1 template" in e.reason

    other = Host.objects.create(name="h8", address="10.211.0.249", host_key=KEY)
    r = admin_client.post(f"/admin/hostjobs/host/{other.pk}/delete/", {"post": "yes"})
    assert r.status_code == 302
    e = only("host.delete", outcome="accepted")
    assert (e.object_id, e.object_repr) == (str(other.pk), "h8")
    assert Event.objects.count() == 5


def test_admin_template_delete_and_job_cancel(admin_client, host):
    t = create_template(host, "t1")
    r = admin_client.post(f"/admin/templates/template/{t.pk}/delete/", {"post": "yes"})
    assert r.status_code == 302
    e = only("template.delete")
    assert (e.source, e.outcome, e.object_id) == ("admin", "accepted", str(t.pk))
    r = admin_client.post(f"/admin/templates/template/{t.pk}/delete/", {"post": "yes"})  # locked now
    e = only("template.delete", outcome="refused")
    assert "has a job running" in e.reason

    t2, t3 = create_template(host, "t2"), create_template(host, "t3")
    r = admin_client.post("/admin/templates/template/", {"action": "delete_selected", "post": "yes",
                                                         "_selected_action": [t2.pk, t3.pk]})
    assert r.status_code == 302
    assert sorted(Event.objects.filter(action="template.delete", outcome="accepted").values_list(
        "object_id", flat=True)) == sorted([str(t.pk), str(t2.pk), str(t3.pk)])

    running = HostJob.create(host, JobAction.CREATE_TEMPLATE)
    done = HostJob.create(host, JobAction.CREATE_TEMPLATE)
    done.start()
    done.end("done")
    r = admin_client.post("/admin/hostjobs/hostjob/", {"action": "cancel_jobs",
                                                       "_selected_action": [str(running.pk), str(done.pk)]})
    assert r.status_code == 302
    assert HostJob.objects.get(pk=running.pk).status == "aborted"
    assert only("job.cancel", object_id=str(running.pk)).outcome == "accepted"
    e = only("job.cancel", object_id=str(done.pk))
    assert e.outcome == "refused"
    assert "cannot be cancelled" in e.reason
    assert {e.source for e in Event.objects.all()} == {"admin"}


# -- command line ----------------------------------------------------------------------------------------------
def test_cli_host_add_is_recorded_as_the_os_user(monkeypatch):
    monkeypatch.setattr("audit.cli.os_user", lambda: "operator7")
    call_command("host_add", "h9", "10.211.0.250", "--host-key", KEY, stdout=open("/dev/null", "w"))
    h = Host.objects.get(name="h9")
    e = only("host.create")
    assert (e.source, e.username, e.user_id, e.outcome, e.object_id, e.object_repr) == (
        "cli", "operator7", None, "accepted", str(h.pk), "h9")
    assert e.request_id

    with pytest.raises(CommandError):
        call_command("host_add", "h10", "not-an-address", "--host-key", KEY)
    e = only("host.create", outcome="refused")
    assert (e.source, e.username, e.object_repr) == ("cli", "operator7", "h10")
    assert "address" in e.reason


def test_cli_refusals_of_template_create_and_host_install(host):
    with pytest.raises(CommandError):
        call_command("template_create", "--host", "nosuch", "--vm", "v", "--name", "x")
    e = only("template.create")
    assert (e.source, e.outcome, e.object_repr) == ("cli", "refused", "x")
    assert "no host" in e.reason
    with pytest.raises(CommandError):
        call_command("host_install", "nosuch")
    e = only("host.install")
    assert (e.source, e.outcome) == ("cli", "refused")


# -- reading the trail ---------------------------------------------------------------------------------------
def test_events_api_filters_pages_and_permission(api, admin_user):
    for i in range(3):
        assert api.post("/api/hosts/", {**HOST, "name": f"h{i}", "address": f"10.211.0.24{i}"},
                        format="json").status_code == 201
    api.post("/api/hosts/", {**HOST, "address": "bad"}, format="json")
    r = api.get("/api/events/", {"page_size": 2})
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 4
    assert len(body["results"]) == 2
    assert body["next"]
    first = body["results"][0]
    assert first["action"] == "host.create"
    assert first["outcome"] == "refused"
    assert first["user"] == "admin"
    assert set(first) == {"id", "when", "user", "user_id", "source", "action", "object", "outcome", "reason",
                          "changes", "request_id"}

    h1 = Host.objects.get(name="h1")
    assert [e["object"]["repr"] for e in api.get("/api/events/", {"object": f"host:{h1.pk}"}).json()["results"]] == [
        "h1"]
    assert api.get("/api/events/", {"outcome": "refused"}).json()["count"] == 1
    assert api.get("/api/events/", {"user": "admin", "action": "host.create"}).json()["count"] == 4
    assert api.get("/api/events/", {"user": "someone"}).json()["count"] == 0
    middle = Event.objects.order_by("when", "id")[1].when
    assert api.get("/api/events/", {"since": middle.isoformat()}).json()["count"] == 3
    assert api.get("/api/events/", {"until": middle.isoformat()}).json()["count"] == 1

    # only with audit.view_event; and nobody writes
    assert token_client(user_with("carol")).get("/api/events/").status_code == 403
    assert token_client(user_with("dave", "view_event")).get("/api/events/").json()["count"] == 4
    pk = Event.objects.first().pk
    assert api.post("/api/events/", {}, format="json").status_code == 405
    assert api.delete(f"/api/events/{pk}/").status_code == 405
    assert api.patch(f"/api/events/{pk}/", {"action": "x"}, format="json").status_code == 405


def test_no_one_changes_or_deletes_an_event(admin_client):
    e = Event.objects.create(username="x", source="api", action="host.create", outcome="accepted")
    for url in ("/admin/audit/event/add/", f"/admin/audit/event/{e.pk}/delete/"):
        assert admin_client.post(url, {"post": "yes", "username": "y"}).status_code == 403, url
    r = admin_client.post(f"/admin/audit/event/{e.pk}/change/", {"username": "y", "action": "z"})
    assert r.status_code == 403
    assert admin_client.get("/admin/audit/event/").status_code == 200  # listed, read-only
    e.username = "changed"
    with pytest.raises(ImmutableEvent):
        e.save()
    with pytest.raises(ImmutableEvent):
        e.delete()
    with pytest.raises(ImmutableEvent):
        Event.objects.filter(pk=e.pk).update(username="y")
    with pytest.raises(ImmutableEvent):
        Event.objects.all().delete()
    assert Event.objects.get(pk=e.pk).username == "x"


@pytest.mark.security
def test_no_secret_ever_lands_in_the_trail(api, admin_client, host):
    """Passwords, hashes, keys and secrets are never recorded: not a host's callback secret, not a
    webhook's secret, not a template's root password or its hash, not a user's password."""
    r = api.post("/api/hosts/", HOST, format="json")
    h = Host.objects.get(pk=r.json()["id"])
    secrets_seen = [h.callback_secret]
    wh = {"name": "w", "url": "http://127.0.0.1:9/hook", "events": ["template.ok"], "secret": "s3cret-webhook-value-1"}
    assert api.post("/api/webhooks/", wh, format="json").status_code == 201
    assert api.post("/api/webhooks/", {**wh, "url": "ftp://x"}, format="json").status_code == 400
    wh_id = api.get("/api/webhooks/").json()["results"][0]["id"]
    assert api.patch(f"/api/webhooks/{wh_id}/", {"secret": "an-0ther-secret-value"}, format="json").status_code == 200
    secrets_seen += ["s3cret-webhook-value-1", "an-0ther-secret-value"]
    admin_client.post("/admin/webhooks/webhook/add/", {"name": "w2", "url": "http://127.0.0.1:9/h", "events": [
        "job.failed"], "secret": "admin-form-secret-42", "active": "on", "deliveries-TOTAL_FORMS": "0",
        "deliveries-INITIAL_FORMS": "0"})
    admin_client.post("/admin/webhooks/webhook/add/", {"name": "w3", "url": "nope", "events": ["job.failed"],
                                                       "secret": "admin-form-secret-43", "deliveries-TOTAL_FORMS": "0",
                                                       "deliveries-INITIAL_FORMS": "0"})
    secrets_seen += ["admin-form-secret-42", "admin-form-secret-43"]
    r = api.post("/api/templates/", {"name": "t2", "host": host.pk, "vm": "v", "seal": True,
                                     "seal_options": {"root_password": "Root-Pass-Word-9", "hostname": "bad host!"}},
                 format="json")
    assert r.status_code == 400
    secrets_seen.append("Root-Pass-Word-9")
    r = api.post("/api/templates/", {"name": "t3", "host": host.pk, "vm": "v", "seal": True,
                                     "seal_options": {"root_password": "Root-Pass-Word-8"}}, format="json")
    secrets_seen.append("Root-Pass-Word-8")
    r = api.post("/api/hosts/", {**HOST, "name": "h7", "host_key": "ssh-ed25519 AAAAnotakey"}, format="json")
    assert r.status_code == 400
    assert Event.objects.filter(action="webhook.create").count() == 4
    assert Event.objects.filter(action="webhook.update", outcome="accepted").get().changes == ["secret"]
    dump = json.dumps(list(Event.objects.values()), default=str)
    for s in secrets_seen:
        assert s not in dump, s
    assert "$6$" not in dump
    assert "pbkdf2" not in dump
    # nor in any answer of the API
    answers = json.dumps([api.get("/api/webhooks/").json(), api.get(f"/api/webhooks/{wh_id}/").json(),
                          api.get("/api/events/", {"page_size": 500}).json()])
    for s in secrets_seen:
        assert s not in answers, s
    page = admin_client.get(f"/admin/webhooks/webhook/{wh_id}/change/").content.decode()
    assert "an-0ther-secret-value" not in page
    assert 'type="password"' in page


def test_admin_template_form_refusal_is_recorded_once(admin_client, host):
    r = admin_client.post("/admin/templates/template/add/", {"host": host.pk, "vm_name": "v", "name": "t9",
                                                              "seal": "on", "timezone": "Nowhere/Land"})
    assert r.status_code == 200
    e = only("template.create")
    assert (e.source, e.username, e.outcome, e.object_id) == ("admin", "admin", "refused", "")
    assert "unknown time zone" in e.reason
