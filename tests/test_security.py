"""Hostile input, access control, CSRF, throttling, secrets (issue: reliability and security).

Refusals here happen before any host is contacted, so no host is needed; what crosses to a host
(hostile strings that are accepted, fuzzing the write endpoints, a host whose key changed, the same
name raced) is in test_e2e_security.py, against a real test host."""

import pytest

from tests.fixtures.hostjobs import KEY
from tests.fixtures.templates import create_template
from tests.utils.users import user_with

pytestmark = pytest.mark.security

HOSTILE = [
    "x'; touch /tmp/vmseal-pwned-1; echo '",
    'x"; touch /tmp/vmseal-pwned-2; echo "',
    "$(touch /tmp/vmseal-pwned-3)",
    "`touch /tmp/vmseal-pwned-4`",
    "a;b|c&d>e<f",
    "../../../../etc/passwd",
    "a" * 10_000,
    "line\nbreak",
    "nul\x00byte",
    "\u202eevil\u202d unicode",
]


def snapshot():
    from hostjobs.models import Host, HostJob
    from templates.models import Template
    from volumes.models import Volume

    return Template.objects.count(), Volume.objects.count(), HostJob.objects.count(), Host.objects.count()


@pytest.mark.django_db
@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("field", ["vm", "name", "seal_options.hostname", "seal_options.timezone",
                                   "seal_options.operations_add", "seal_options.remove_user_accounts"])
def test_hostile_strings_are_refused_cleanly_or_never_reach_a_shell(admin_client, host, field, value):
    """Every hostile value in every user-facing field: a clean 4xx and nothing stored, or (when the
    value is a legal label) refused only because this host cannot be contacted - never a 5xx, never run.
    (Accepted hostile labels going all the way through a flow: test_e2e_security.)"""
    body = {"name": "t", "host": host.pk, "vm": "v", "seal": True}
    if field.startswith("seal_options."):
        key = field.split(".", 1)[1]
        body["seal_options"] = {key: [value] if key in ("operations_add", "remove_user_accounts") else value}
    else:
        body[field] = value
    before = snapshot()
    r = admin_client.post("/api/templates/", body, content_type="application/json")
    assert 400 <= r.status_code < 500, r.content[:300]
    assert r.headers["Content-Type"].startswith("application/json")
    assert snapshot() == before
    import glob

    assert not glob.glob("/tmp/vmseal-pwned-*")


@pytest.mark.django_db
@pytest.mark.parametrize("body", [b"\xff\xfe\x00not json", b'{"name": "\xc3\x28"}', b"{" * 5000, b"[]", b"null"])
def test_malformed_bodies_are_a_400(admin_client, host, body):
    before = snapshot()
    r = admin_client.post("/api/templates/", body, content_type="application/json")
    assert r.status_code == 400, r.content[:300]
    assert snapshot() == before


@pytest.mark.django_db
def test_volume_paths_and_pools_are_never_taken_from_a_client(admin_client, host):
    r = admin_client.post("/api/templates/", {"name": "t", "host": host.pk, "vm": "v", "disks": [
        {"volume": {"path": "/etc/shadow"}}], "path": "/etc/shadow"}, content_type="application/json")
    assert r.status_code == 400  # the unreachable host; the extra fields are read-only and ignored
    for pool in ("/var/../etc", "relative/pool", "/var/lib/vmseal/$(x)", "/var/lib/vmseal/a b"):
        r = admin_client.post("/api/hosts/", {"name": "p", "address": "10.211.0.9", "host_key": KEY,
                                              "pool_path": pool}, content_type="application/json")
        assert r.status_code == 400, pool
        assert "pool_path" in r.json()


# -- access ------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_each_access_level_sees_exactly_what_its_permissions_allow(client, host, operation, template):
    from hostjobs.models import HostJob
    from templates.models import Template

    op, t = operation, template
    levels = {
        "anonymous": None,
        "reader": user_with("reader"),  # authenticated, no permissions: reads only
        "maker": user_with("maker", "add_template"),
        "canceller": user_with("canceller", "change_hostjob"),
        "deleter": user_with("deleter", "delete_template"),
    }
    expected = {  # what each may do: read, create (reaches validation: 400 here), cancel, delete
        "anonymous": {"read": False, "create": False, "cancel": False, "delete": False},
        "reader": {"read": True, "create": False, "cancel": False, "delete": False},
        "maker": {"read": True, "create": True, "cancel": False, "delete": False},
        "canceller": {"read": True, "create": False, "cancel": True, "delete": False},
        "deleter": {"read": True, "create": False, "cancel": False, "delete": True},
    }
    for level, user in levels.items():
        client.logout()
        if user:
            client.force_login(user)
        seen = {
            "read": client.get("/api/templates/").status_code == 200,
            "create": client.post("/api/templates/", {"name": "n", "host": host.pk, "vm": "v"},
                                  content_type="application/json").status_code not in (401, 403),
            "cancel": client.post(f"/api/jobs/{op.pk}/cancel/").status_code not in (401, 403),
            "delete": client.delete(f"/api/templates/{t.pk}/").status_code not in (401, 403),
        }
        assert seen == expected[level], level
        if level == "canceller":  # its cancel went through: put the job back for the next level
            HostJob.objects.filter(pk=op.pk).update(status="running", error="")
        if level == "deleter":
            t.refresh_from_db()
            assert t.status == "locked"  # a delete job was queued: undo for the assertions below
    assert Template.objects.filter(name="n").count() == 0, "no one's create reached the host"


@pytest.mark.django_db
def test_sealing_and_the_admin_site_need_their_own_rights(client, host):
    maker = user_with("maker", "add_template")
    client.force_login(maker)
    r = client.post("/api/templates/", {"name": "n", "host": host.pk, "vm": "v", "seal": True},
                    content_type="application/json")
    assert r.status_code == 403
    assert "seal" in r.json()["detail"]
    assert client.get("/admin/").status_code == 302, "not staff: no admin site"
    staff = user_with("staff", staff=True)
    client.force_login(staff)
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/templates/template/add/").status_code == 403, "staff without add_template"
    assert client.get("/admin/hostjobs/host/").status_code == 403


@pytest.mark.django_db
def test_the_apps_private_key_and_host_secrets_are_never_served(admin_client, host, settings):
    from hostjobs.transport import app_public_key

    app_public_key()  # make sure the key exists
    private = settings.VMSEAL_SSH_KEY.read_text()
    body = private.split("-----")[2].strip().splitlines()[0]
    pages = [admin_client.get(p) for p in ("/api/hosts/", f"/api/hosts/{host.pk}/", "/admin/hostjobs/host/",
                                           f"/admin/hostjobs/host/{host.pk}/change/", "/api/schema/")]
    for page in pages:
        assert page.status_code == 200
        text = page.content.decode()
        assert body not in text
        assert host.callback_secret not in text
        assert "PRIVATE KEY" not in text
    for path in ("/static/../ssh/id_ed25519", "/static/%2e%2e/ssh/id_ed25519", "/media/ssh/id_ed25519",
                 "/var/ssh/id_ed25519", "/api/../var/ssh/id_ed25519"):
        r = admin_client.get(path)
        assert r.status_code == 404, path
        assert body not in r.content.decode(errors="replace")


# -- CSRF ----------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_session_writes_need_a_csrf_token(django_user_model, host):
    from django.test import Client

    from templates.models import Template

    admin = django_user_model.objects.create_superuser("adm", "a@example.test", "adm-pass-1")
    c = Client(enforce_csrf_checks=True)
    c.force_login(admin)
    before = snapshot()
    r = c.post("/api/templates/", {"name": "n", "host": host.pk, "vm": "v"}, content_type="application/json")
    assert r.status_code == 403
    assert "CSRF" in r.json()["detail"]
    r = c.post("/admin/templates/template/add/", {"host": host.pk, "vm_name": "v", "name": "n"})
    assert r.status_code == 403
    r = c.delete("/api/templates/1/")
    assert r.status_code in (403, 404)
    assert snapshot() == before
    # with the token, the same form reaches validation (the unreachable host), still creating nothing
    page = c.get("/admin/templates/template/add/")
    token = page.cookies["csrftoken"].value
    r = c.post("/admin/templates/template/add/", {"host": host.pk, "vm_name": "v", "name": "n",
                                                   "csrfmiddlewaretoken": token})
    assert r.status_code == 200
    assert Template.objects.count() == 0


@pytest.mark.django_db
def test_token_clients_need_no_csrf_and_callbacks_are_signed_instead(django_user_model, host):
    from django.test import Client
    from rest_framework.authtoken.models import Token

    user = django_user_model.objects.create_superuser("tok", "t@example.test", "tok-pass-1")
    c = Client(enforce_csrf_checks=True)
    r = c.post("/api/templates/", {"name": "n", "host": host.pk, "vm": "v"}, content_type="application/json",
               HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    assert r.status_code == 400, "validated (the unreachable host), not refused for CSRF"
    r = c.post("/api/callbacks/", b"{}", content_type="application/json")
    assert r.status_code == 401, "unsigned"


# -- throttling ------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_template_creation_is_throttled_per_user(admin_client, host, monkeypatch, django_user_model):
    from rest_framework.throttling import ScopedRateThrottle

    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"template_create": "3/min"})
    for _ in range(3):
        assert admin_client.post("/api/templates/", {"name": "n", "host": host.pk, "vm": "v"},
                                 content_type="application/json").status_code == 400
    before = snapshot()
    r = admin_client.post("/api/templates/", {"name": "n", "host": host.pk, "vm": "v"}, content_type="application/json")
    assert r.status_code == 429
    assert int(r["Retry-After"]) > 0
    assert snapshot() == before
    assert admin_client.get("/api/templates/").status_code == 200, "reads are not throttled"
    other = django_user_model.objects.create_superuser("other", "o@example.test", "other-pass-1")
    admin_client.force_login(other)
    assert admin_client.post("/api/templates/", {"name": "n", "host": host.pk, "vm": "v"},
                             content_type="application/json").status_code == 400, "per user"


# -- concurrency -----------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_deleting_a_template_while_its_job_runs_is_refused(admin_client, host, operation):
    op = operation
    t = create_template(host, "busy", status="locked", phase="SEAL", job=op)
    before = snapshot()
    r = admin_client.delete(f"/api/templates/{t.pk}/")
    assert r.status_code == 409
    assert "has a job running" in r.json()["template"][0]
    assert snapshot() == before
    t.refresh_from_db()
    assert (t.status, t.job_id) == ("locked", op.pk)


# -- Idempotency-Key -------------------------------------------------------------------------------
@pytest.mark.django_db
def test_every_refusal_frees_the_idempotency_key(client, django_user_model, host):
    """A key stays claimed only by a request that started an operation: a 403 (a seal without the
    seal_template permission), a 400 (validation) or a refusal by the host check frees it, so the
    corrected request with the same key is taken, not a 409."""
    from django.contrib.auth.models import Permission

    from templates.models import IdempotencyKey

    maker = user_with("keyed", "add_template")
    client.force_login(maker)
    body = {"name": "keyed", "host": host.pk, "vm": "v", "seal": True}

    def create(data):
        return client.post("/api/templates/", data, content_type="application/json", HTTP_IDEMPOTENCY_KEY="k-1")

    r = create(body)
    assert r.status_code == 403, r.content
    assert not IdempotencyKey.objects.exists(), "a 403 frees the key"
    r = create({**body, "seal_options": {"hostname": "not a host name"}})
    assert r.status_code in (400, 403), r.content
    assert not IdempotencyKey.objects.exists()
    maker.user_permissions.add(Permission.objects.get(codename="seal_template"))
    client.force_login(django_user_model.objects.get(pk=maker.pk))  # permissions are cached per user object
    r = create(body)
    assert r.status_code == 400, r.content  # past the permission: refused by the host check, not a 409
    assert "host" in r.json()
    assert not IdempotencyKey.objects.exists()


# -- GET /api/hosts/<id>/vms/ (opens a libvirt connection to the host) -----------------------------------
@pytest.mark.django_db
def test_listing_a_hosts_vms_needs_view_host_or_add_template(client, host):
    """A reader without either permission is refused before any connection is attempted (the host's
    key is unusable: an attempt would be a 502 'cannot be used', not a 403)."""
    client.force_login(user_with("plain"))
    r = client.get(f"/api/hosts/{host.pk}/vms/")
    assert r.status_code == 403, r.content
    assert client.get(f"/api/hosts/{host.pk}/").status_code == 200, "the host itself stays readable"
    for codename in ("view_host", "add_template"):
        client.force_login(user_with(f"with-{codename}", codename))
        r = client.get(f"/api/hosts/{host.pk}/vms/")
        assert r.status_code == 502, r.content  # allowed: it went on to the host (whose key is unusable)
    client.logout()
    assert client.get(f"/api/hosts/{host.pk}/vms/").status_code in (401, 403)


@pytest.mark.django_db
def test_listing_a_hosts_vms_is_throttled_per_user(client, host, monkeypatch):
    from rest_framework.throttling import ScopedRateThrottle

    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"host_vms": "2/min", "template_create": "30/min"})
    client.force_login(user_with("lister", "view_host"))
    assert [client.get(f"/api/hosts/{host.pk}/vms/").status_code for _ in range(2)] == [502, 502]
    r = client.get(f"/api/hosts/{host.pk}/vms/")
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) > 0
    assert client.get(f"/api/hosts/{host.pk}/").status_code == 200, "other reads are not throttled"
    client.force_login(user_with("other", "view_host"))
    assert client.get(f"/api/hosts/{host.pk}/vms/").status_code == 502, "per user"


def test_the_vms_rate_is_a_setting_from_the_environment():
    import os
    import subprocess
    import sys

    code = ("import django; django.setup(); from django.conf import settings; "
            "print(settings.REST_FRAMEWORK['DEFAULT_THROTTLE_RATES']['host_vms'])")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "vmseal.settings", "VMSEAL_HOST_VMS_RATE": "7/hour"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "7/hour"
