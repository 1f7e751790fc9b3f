"""Cancelling jobs through the API, the admin and a source VM's start event: a delete is refused with a
409 that says why (it runs to its end), so it never leaves its template locked or its job aborting; a
started source VM cancels its operation once, with its reason. No host needed: the refusal and the
cancel happen before any host work."""

import pytest

from hostjobs.models import HostJob, JobAction
from sealing import service
from templates.models import Template


@pytest.fixture
def delete_op(template):
    t = template
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


def test_a_source_vm_that_starts_cancels_its_operation_once(host, delete_op):
    from hostjobs.models import Host
    from sealing import signals

    op = HostJob.create(host, JobAction.CREATE_TEMPLATE)
    op.start()
    copying = Template.objects.create(name="c", host=host, vm_name="src", phase="COPY_DISKS", job=op)
    event = {"kind": "domain", "domain": "src", "op": "start"}
    signals.on_host_event(Host, host, event)
    r = HostJob.objects.get(pk=op.pk)
    assert (r.status, r.error) == ("aborting", "source VM 'src' started on h (start) during COPY_DISKS")
    signals.on_host_event(Host, host, {**event, "op": "started"})  # a second event: already being cancelled
    assert HostJob.objects.get(pk=op.pk).error == r.error
    done = HostJob.create(host, JobAction.CREATE_TEMPLATE)
    done.start()
    done.end("done")
    Template.objects.filter(pk=copying.pk).update(job=done)
    signals.on_host_event(Host, host, event)  # it ended meanwhile: nothing to cancel, nothing written
    assert (HostJob.objects.get(pk=done.pk).status, HostJob.objects.get(pk=done.pk).error) == ("done", "")
