"""Authentication and permissions at the API boundary (no host needed: refusals happen first)."""

import pytest
from django.core.management import call_command


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/templates/", "/api/hosts/", "/api/jobs/", "/api/volumes/"])
def test_anonymous_requests_are_refused(client, path):
    assert client.get(path).status_code in (401, 403)
    assert client.post(path, {"name": "x"}, content_type="application/json").status_code in (401, 403)


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
def test_reading_is_not_writing(client, django_user_model):
    """An authenticated user without model permissions can read but not create."""
    django_user_model.objects.create_user("reader", password="reader-pass-1")
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
