"""Authentication and permissions at the API boundary (no host needed: refusals happen first)."""

import pytest
from django.core.management import call_command

from tests.utils.users import user_with


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/templates/", "/api/hosts/", "/api/jobs/", "/api/volumes/", "/api/schema/",
                                  "/api/docs/"])
def test_anonymous_requests_are_refused(client, path):
    assert client.get(path).status_code in (401, 403)
    assert client.post(path, {"name": "x"}, content_type="application/json").status_code in (401, 403)


@pytest.mark.django_db
def test_the_schema_and_its_ui_answer_authenticated_users(client):
    user_with("reader")
    client.login(username="reader", password="reader-pass-1")
    assert client.get("/api/schema/?format=json").json()["info"]["title"] == "vmseal API"
    assert "swagger-ui" in client.get("/api/docs/").content.decode()


@pytest.mark.django_db
def test_anonymous_post_creates_nothing(client):
    from templates.models import Template

    r = client.post("/api/templates/", {"name": "x", "host": 1, "vm": "v", "seal": True},
                    content_type="application/json")
    assert r.status_code in (401, 403)
    assert Template.objects.count() == 0


@pytest.mark.django_db
def test_drf_create_token_works_with_token_header(client, django_user_model, capsys):
    django_user_model.objects.create_user("ops", password="ops-pass-123")
    call_command("drf_create_token", "ops")
    key = capsys.readouterr().out.split()[2]
    r = client.get("/api/templates/", HTTP_AUTHORIZATION=f"Token {key}")
    assert r.status_code == 200
    assert r.json()["results"] == []


@pytest.mark.django_db
def test_reading_is_not_writing(client):
    """An authenticated user without model permissions can read but not create."""
    user_with("reader")
    client.login(username="reader", password="reader-pass-1")
    assert client.get("/api/templates/").status_code == 200
    r = client.post("/api/hosts/", {"name": "h", "address": "10.211.0.99", "host_key": "x"},
                    content_type="application/json")
    assert r.status_code == 403


@pytest.mark.django_db
def test_host_key_is_validated(admin_client):
    r = admin_client.post("/api/hosts/", {"name": "h", "address": "10.211.0.99", "host_key": "ssh-ed25519 !!!"},
                          content_type="application/json")
    assert r.status_code == 400
    assert "base64" in r.json()["host_key"][0]
    r = admin_client.post("/api/hosts/", {"name": "h", "address": "10.211.0.99", "pool_path": "/var/../etc",
                                          "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnn"
                                                      "UMW7yDpDlHgZ1aqYjakW6cwK"}, content_type="application/json")
    assert r.status_code == 400
    assert "pool_path" in r.json()


def test_vmseal_pubkey_prints_the_app_key(capsys):
    call_command("vmseal_pubkey")
    out = capsys.readouterr().out.strip()
    assert out.startswith("ssh-ed25519 ")
    assert out.endswith(" vmseal")


@pytest.mark.django_db
def test_invalid_seal_options_are_refused_with_the_field_before_any_host_contact(admin_client, host):
    from templates.models import Template

    # an address nobody answers on: a refusal that needed the host would fail differently
    h = host
    for options, field in (({"hostname": "a b"}, "hostname"), ({"timezone": "Nowhere/Land"}, "timezone"),
                           ({"root_password": "x"}, "root_password"), ({"hostnme": "web"}, "hostnme")):
        r = admin_client.post("/api/templates/", {"name": "t", "host": h.pk, "vm": "v", "seal": True,
                                                  "seal_options": options}, content_type="application/json")
        assert r.status_code == 400, r.content
        assert field in r.json()["seal_options"]
    r = admin_client.post("/api/templates/", {"name": "t", "host": h.pk, "vm": "v", "seal": False,
                                              "seal_options": {"hostname": "web"}}, content_type="application/json")
    assert r.status_code == 400
    assert "seal" in r.json()["seal_options"][0]
    assert Template.objects.count() == 0


@pytest.mark.django_db
def test_a_host_with_an_unusable_pinned_key_is_a_clear_refusal(admin_client, host):
    r = admin_client.post("/api/templates/", {"name": "t", "host": host.pk, "vm": "v"}, content_type="application/json")
    assert r.status_code == 400
    assert "pinned host key is not usable" in r.json()["host"][0]


@pytest.mark.django_db
def test_new_template_form_shows_seal_option_errors(admin_client, host):
    from templates.models import Template

    h = host
    page = admin_client.get("/admin/templates/template/add/").content.decode()
    for field in ("hostname", "timezone", "root_password", "ssh_key", "firstboot_commands", "operations_add"):
        assert f'name="{field}"' in page
    r = admin_client.post("/admin/templates/template/add/", {"host": h.pk, "vm_name": "v", "name": "t", "seal": "on",
                                                              "timezone": "Nowhere/Land", "root_password": "x"})
    assert r.status_code == 200
    body = r.content.decode()
    assert "unknown time zone" in body
    assert "at least 8 characters" in body
    assert Template.objects.count() == 0


@pytest.mark.django_db
def test_sealing_needs_its_own_permission(client, host):
    from templates.models import Template

    client.force_login(user_with("maker", "add_template"))
    r = client.post("/api/templates/", {"name": "t", "host": host.pk, "vm": "v", "seal": True},
                    content_type="application/json")
    assert r.status_code == 403
    assert "seal" in r.json()["detail"]
    assert Template.objects.count() == 0
