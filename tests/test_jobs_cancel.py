"""Cancelling jobs through the API and the admin: a delete is refused with a 409 that says why (it runs
to its end), so it never leaves its template locked or its job aborting. No host needed: the refusal
happens before any work."""

import pytest

from hostjobs.models import Host, HostJob, JobAction
from sealing import service
from templates.models import Template

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK"


@pytest.fixture
def delete_op(db):
    host = Host.objects.create(name="h", address="10.211.0.252", host_key=KEY)
    t = Template.objects.create(name="t", host=host, vm_name="v", status="ok", phase="DONE")
    op = service.request_delete(t)  # pending; the flow is enqueued on commit (never, in this test)
    return t, op


def _state(t, op):
    return Template.objects.get(pk=t.pk).status, HostJob.objects.get(pk=op.pk).status


def test_cancelling_a_pending_or_running_delete_is_a_409_saying_why(admin_client, delete_op):
    t, op = delete_op
    assert _state(t, op) == ("locked", "pending")
    r = admin_client.post(f"/api/jobs/{op.pk}/cancel/")
    assert r.status_code == 409, r.content
    assert r.json()["code"] == "not_cancellable"
    assert "delete runs to its end" in r.json()["detail"]
    assert _state(t, op) == ("locked", "pending"), "the delete goes on: its flow ends it and the template"
    op.start()
    r = admin_client.post(f"/api/jobs/{op.pk}/cancel/")
    assert r.status_code == 409, r.content
    assert _state(t, op) == ("locked", "running")
    child = HostJob.create(op.host, JobAction.DELETE, parent=op, step="DELETE", target="volume:x")
    child.start()
    r = admin_client.post(f"/api/jobs/{child.pk}/cancel/")
    assert r.status_code == 409, r.content
    assert HostJob.objects.get(pk=child.pk).status == "running"


def test_the_admins_cancel_action_refuses_a_delete_the_same_way(admin_client, delete_op):
    t, op = delete_op
    r = admin_client.post("/admin/hostjobs/hostjob/", {"action": "cancel_jobs", "_selected_action": [str(op.pk)]},
                          follow=True)
    assert r.status_code == 200
    shown = [str(m) for m in r.context["messages"]]
    assert any("cannot be cancelled" in m and "delete runs to its end" in m for m in shown), shown
    assert _state(t, op) == ("locked", "pending")


def test_a_create_operation_can_still_be_cancelled(admin_client, delete_op):
    t, _ = delete_op
    op = HostJob.create(t.host, JobAction.CREATE_TEMPLATE)
    assert admin_client.post(f"/api/jobs/{op.pk}/cancel/").status_code == 202
    assert HostJob.objects.get(pk=op.pk).status == "aborted"
