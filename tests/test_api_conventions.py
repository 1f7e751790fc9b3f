"""API conventions: filtering, ordering, pagination, error shapes, the OpenAPI schema (checked against
the real read endpoints with schemathesis)."""

import json

import pytest

from tests.fixtures.templates import create_template


@pytest.fixture
def data(host, other_host):
    """Seven templates on two hosts (web-1, 3, 5 on ``host``), each with a disk on its own volume, its create
    operation done and a seal job under it; web-5 and web-6 still locked in SEAL."""
    from hostjobs.models import HostJob, JobAction

    out = []
    for i in range(7):
        on = host if i % 2 else other_host
        op = HostJob.create(on, JobAction.CREATE_TEMPLATE, target=f"template:{i}")
        op.start()
        op.end("done")
        t = create_template(on, f"web-{i}", disks=1, vm_name=f"vm{i}", seal=i % 3 == 0, sealed=i % 3 == 0,
                            status="ok" if i < 5 else "locked", phase="DONE" if i < 5 else "SEAL", job=op)
        child = HostJob.create(on, JobAction.SEAL, parent=op, target=f"template:{t.pk}")
        child.start()
        child.end("done")
        out.append(t)
    return host, other_host, out


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


def test_the_list_rows_are_what_the_list_serializer_documents(admin_client, data, django_assert_max_num_queries):
    from rest_framework.renderers import JSONRenderer

    from templates.api import TemplateListSerializer
    from templates.models import Template

    _, _, tpls = data
    Template.objects.filter(pk=tpls[0].pk).update(audit={"passed": False, "items": []}, description="d")
    Template.objects.filter(pk=tpls[1].pk).update(audit={"passed": True, "items": []})
    with django_assert_max_num_queries(7):  # session user, count, ids, rows, disk summary
        rows = admin_client.get("/api/templates/?ordering=name&page_size=500").json()["results"]
    reference = TemplateListSerializer(Template.objects.with_disk_summary().order_by("name"), many=True).data
    assert rows == json.loads(JSONRenderer().render(reference)), "as the API renders the serializer's output"
    assert [r["audit_passed"] for r in rows[:3]] == [False, True, None]
    assert rows[0]["disk_count"] == 1
    assert rows[0]["size"] == 1 << 26


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


def test_deleting_a_template_with_a_running_job_is_refused(admin_client, data):
    from templates.models import Template

    locked = Template.objects.get(name="web-5")
    assert locked.status == "locked"
    r = admin_client.delete(f"/api/templates/{locked.pk}/")
    assert r.status_code == 409
    assert "has a job running" in r.json()["template"][0]
    assert Template.objects.filter(pk=locked.pk, status="locked").exists()


def test_job_follow_exit_status_is_the_outcome(data):
    from django.core.management import call_command

    from hostjobs.models import HostJob

    op = HostJob.objects.filter(action="create_template").first()
    with pytest.raises(SystemExit) as e:
        call_command("job_follow", str(op.pk), interval=0.01)
    assert e.value.code == 0
    failed = HostJob.create(op.host, "copy")
    failed.start()
    failed.end("failed", "boom", "error")
    with pytest.raises(SystemExit) as e:
        call_command("job_follow", str(failed.pk), interval=0.01)
    assert e.value.code == 1


def test_template_create_command_refuses_bad_options_clearly(data):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="seal_options.timezone"):
        call_command("template_create", "--host", "h", "--vm", "v", "--name", "n", "--seal", "--timezone", "Mars/X")
    with pytest.raises(CommandError, match="no host"):
        call_command("template_create", "--host", "nope", "--vm", "v", "--name", "n")
