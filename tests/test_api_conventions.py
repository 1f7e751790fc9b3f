"""API conventions: filtering, ordering, pagination, error shapes, the OpenAPI schema (checked against
the real read endpoints with schemathesis)."""

import pytest

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK"


@pytest.fixture
def data(db):
    from hostjobs.models import Host, HostJob, JobAction
    from templates.models import Template, TemplateDisk
    from volumes.models import Volume

    h1 = Host.objects.create(name="h1", address="10.211.0.61", host_key=KEY)
    h2 = Host.objects.create(name="h2", address="10.211.0.62", host_key=KEY)
    out = []
    for i in range(7):
        host = h1 if i % 2 else h2
        op = HostJob.create(host, JobAction.CREATE_TEMPLATE, target=f"template:{i}")
        op.start()
        op.finish()
        t = Template.objects.create(name=f"web-{i}", host=host, vm_name=f"vm{i}", seal=i % 3 == 0,
                                    sealed=i % 3 == 0, status="ok" if i < 5 else "locked", job=op)
        v = Volume.objects.create(host=host, type="SHARED", legality="LEGAL", generation=2, size=1 << 26)
        TemplateDisk.objects.create(template=t, index=0, target="vda", source_path="/x", source_format="qcow2",
                                    volume=v)
        child = HostJob.create(host, JobAction.SEAL, parent=op, target=f"template:{t.pk}")
        child.start()
        child.finish()
        out.append(t)
    return h1, h2, out


def names(resp):
    return [t["name"] for t in resp.json()["results"]]


def test_filters_ordering_and_pagination(admin_client, data):
    h1, _, _ = data
    assert admin_client.get("/api/templates/").json()["count"] == 7
    assert sorted(names(admin_client.get(f"/api/templates/?host={h1.pk}"))) == ["web-1", "web-3", "web-5"]
    assert sorted(names(admin_client.get("/api/templates/?sealed=true"))) == ["web-0", "web-3", "web-6"]
    assert sorted(names(admin_client.get("/api/templates/?status=locked"))) == ["web-5", "web-6"]
    assert names(admin_client.get("/api/templates/?name=web-4")) == ["web-4"]
    assert len(names(admin_client.get("/api/templates/?name__icontains=WEB"))) == 7
    assert names(admin_client.get("/api/templates/?ordering=name"))[:2] == ["web-0", "web-1"]
    assert names(admin_client.get("/api/templates/?ordering=-name"))[0] == "web-6"
    page = admin_client.get("/api/templates/?ordering=name&page_size=3&page=2").json()
    assert [t["name"] for t in page["results"]] == ["web-3", "web-4", "web-5"]
    assert page["next"]
    assert page["previous"]
    assert admin_client.get("/api/jobs/?kind=virt").json()["count"] == 7
    assert admin_client.get("/api/jobs/?action=create_template&status=done").json()["count"] == 7
    assert admin_client.get("/api/volumes/?legality=LEGAL&type=SHARED").json()["count"] == 7


def test_errors_are_json_with_field_names(admin_client, data):
    r = admin_client.post("/api/templates/", {"host": 999999}, content_type="application/json")
    assert r.status_code == 400
    body = r.json()
    assert {"name", "vm", "host"} <= set(body)
    assert all(isinstance(v, list) for v in body.values())
    r = admin_client.get("/api/templates/999999/")
    assert r.status_code == 404
    assert "detail" in r.json()
    r = admin_client.get("/api/templates/?status=bogus")
    assert r.status_code == 400
    assert "status" in r.json()


def test_schema_and_docs_are_served(admin_client):
    r = admin_client.get("/api/schema/?format=json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    assert {"/api/templates/", "/api/templates/{id}/", "/api/jobs/{id}/", "/api/jobs/{id}/cancel/",
            "/api/volumes/", "/api/hosts/"} <= set(paths)
    create = paths["/api/templates/"]["post"]
    assert "202" in create["responses"]
    assert any(p["name"] == "Idempotency-Key" for p in create["parameters"])
    docs = admin_client.get("/api/docs/")
    assert docs.status_code == 200
    assert "swagger-ui" in docs.content.decode()
    assert "cdn.jsdelivr" not in docs.content.decode(), "served locally: no CDN"
