"""VMs in the audit trail and in webhook events. Each VM action from each entry point (API, admin, CLI)
leaves exactly one audit event with the right user and source, refusals too; the VM flow (run for real
against the in-process fake host, tests/utils/fakehost.py) queues vm.created, vm.failed, vm.deleted and
job.failed deliveries when, and only when, the change they tell of happened."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.models import Event
from hostjobs import port, runner
from hostjobs.errors import HostCommandFailed
from hostjobs.models import Host, HostJob, JobStatus
from tests.fixtures.templates import create_template
from tests.utils.fakehost import ALL, FakeHost
from webhooks.models import Delivery, Webhook

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK"
HASH = "$6$saltsalt$" + "h" * 86


@pytest.fixture
def fake(db, monkeypatch):
    monkeypatch.setattr(runner, "POLL_MIN", 0.0)
    monkeypatch.setattr(runner, "WATCH", 0.0)
    monkeypatch.setattr("django.conf.settings.VMSEAL_HOST_RETRY", 0)
    host = FakeHost(disks=1)
    with port.use(lambda h: host):
        yield host


@pytest.fixture
def template(db, fake):
    from templates import hardware

    host = Host.objects.create(name="h", address="10.211.0.251", host_key=KEY)
    t = create_template(host, "tpl", disks=1, sealed=True, seal=True, hardware=hardware.scrub(fake.domain_xml("vm")))
    for d in t.disks.select_related("volume"):
        fake.volumes[str(d.volume_id)] = {"id": str(d.volume_id), "type": "SHARED", "legality": "LEGAL",
                                          "generation": d.volume.generation, "parent": None, "format": "qcow2"}
    return t


def only(action, **kw) -> Event:
    found = list(Event.objects.filter(action=action, **kw))
    assert len(found) == 1, [str(e) for e in found]
    return found[0]


def run_vm(name="web-1"):
    from vms import flow
    from vms.models import Vm

    vm = Vm.objects.get(name=name)
    flow.run(vm.pk)
    return Vm.objects.filter(pk=vm.pk).first()


# -- audit -------------------------------------------------------------------------------------------------
def test_api_vm_create_and_delete_are_recorded_once_with_the_tokens_user(api, admin_user, template):
    r = api.post("/api/vms/", {"template": template.pk, "name": "web-1"}, format="json")
    assert r.status_code == 202
    vm = run_vm()
    e = only("vm.create")
    assert (e.source, e.username, e.outcome, e.object_id) == ("api", admin_user.username, "accepted", str(vm.pk))
    r = api.post("/api/vms/", {"template": template.pk, "name": "web-1"}, format="json")
    assert r.status_code == 400
    assert only("vm.create", outcome="refused").source == "api"
    assert api.delete(f"/api/vms/{vm.pk}/").status_code == 202
    e = only("vm.delete")
    assert (e.source, e.username, e.outcome, e.object_id) == ("api", admin_user.username, "accepted", str(vm.pk))
    assert Event.objects.count() == 3


def test_admin_vm_create_and_delete_are_recorded_once_with_the_admins_user(admin_client, admin_user, fake, template):
    from vms.models import Vm

    form = {"template": template.pk, "name": "web-1", "clone": "thin", "hostname": "", "ssh_authorized_keys": KEY,
            "root_password_hash": HASH}
    r = admin_client.post("/admin/vms/vm/new/", {**form, "name": "../x;"})
    assert r.status_code == 200
    e = only("vm.create")
    assert (e.source, e.username, e.outcome, e.object_repr) == ("admin", admin_user.username, "refused", "../x;")
    assert e.reason.startswith("name: ")
    r = admin_client.post("/admin/vms/vm/new/", form)
    assert r.status_code == 302
    vm = Vm.objects.get()
    e = only("vm.create", outcome="accepted")
    assert (e.source, e.username, e.object_id) == ("admin", admin_user.username, str(vm.pk))
    assert HASH not in str(list(Event.objects.values()))
    r = admin_client.post("/admin/vms/vm/new/", form)  # the name is taken now: the service refuses it
    assert Event.objects.filter(action="vm.create", outcome="refused").count() == 2
    assert "already" in Event.objects.filter(action="vm.create", outcome="refused").latest("when").reason

    admin_client.post(f"/admin/vms/vm/{vm.pk}/delete/", {"post": "yes"})  # locked by its create job
    e = only("vm.delete")
    assert (e.source, e.outcome, e.object_id) == ("admin", "refused", str(vm.pk))
    assert "has a job running" in e.reason
    run_vm()
    admin_client.post(f"/admin/vms/vm/{vm.pk}/delete/", {"post": "yes"})
    e = only("vm.delete", outcome="accepted")
    assert (e.source, e.username, e.object_id) == ("admin", admin_user.username, str(vm.pk))
    assert Vm.objects.get().status == "locked"
    assert Event.objects.count() == 5


def test_cli_vm_create_and_delete_are_recorded_once_as_the_os_user(monkeypatch, fake, template):
    from vms.models import Vm

    monkeypatch.setattr("audit.cli.os_user", lambda: "operator7")
    with pytest.raises(CommandError):
        call_command("vm_create", "tpl", "bad;name", "--hostname", "web-1")
    e = only("vm.create")
    assert (e.source, e.username, e.outcome, e.object_repr) == ("cli", "operator7", "refused", "bad;name")
    call_command("vm_create", "tpl", "web-1", stdout=open("/dev/null", "w"))
    vm = Vm.objects.get()
    e = only("vm.create", outcome="accepted")
    assert (e.source, e.username, e.object_id) == ("cli", "operator7", str(vm.pk))
    with pytest.raises(CommandError, match="has a job running"):
        call_command("vm_delete", "web-1")
    e = only("vm.delete")
    assert (e.source, e.outcome, e.object_id) == ("cli", "refused", str(vm.pk))
    run_vm()
    call_command("vm_delete", "web-1", stdout=open("/dev/null", "w"))
    e = only("vm.delete", outcome="accepted")
    assert (e.source, e.username, e.object_id) == ("cli", "operator7", str(vm.pk))
    assert Event.objects.count() == 4


# -- webhooks ----------------------------------------------------------------------------------------------
@pytest.fixture
def hook(db):
    return Webhook.objects.create(name="all", url="http://127.0.0.1:9/h", secret="x" * 16,
                                  events=["vm.created", "vm.failed", "vm.deleted", "job.failed"])


def deliveries():
    return [(d.event, d.payload["object"]["type"], d.payload["data"].get("name"))
            for d in Delivery.objects.order_by("created")]


def new_vm(template, name="web-1", **fields):
    from vms import service
    from vms.models import Vm

    vm = Vm(name=name, template=template, host=template.host, **fields)
    vm.full_clean(validate_constraints=False)
    service.start(vm)
    return Vm.objects.get(pk=vm.pk)


def test_a_vm_made_sends_vm_created_and_its_delete_vm_deleted(hook, fake, template):
    from vms import service
    from vms.models import Vm

    vm = new_vm(template, root_password_hash=HASH)
    assert deliveries() == []
    run_vm()
    assert deliveries() == [("vm.created", "vm", "web-1")]
    d = Delivery.objects.get()
    assert d.payload["object"] == {"type": "vm", "id": vm.pk, "repr": "web-1"}
    assert (d.payload["data"]["status"], d.payload["data"]["clone"], d.payload["data"]["uuid"]) == (
        "ok", "thin", str(vm.uuid))
    assert HASH not in str(d.payload)
    service.request_delete(Vm.objects.get(pk=vm.pk))
    run_vm()
    assert deliveries() == [("vm.created", "vm", "web-1"), ("vm.deleted", "vm", "web-1")]
    gone = Delivery.objects.get(event="vm.deleted")
    assert gone.payload["object"] == {"type": "vm", "id": vm.pk, "repr": "web-1"}


def test_a_failed_vm_sends_vm_failed_and_job_failed_never_vm_created(hook, fake, template):
    new_vm(template)
    fake.when("define_domain", lambda _xml: (_ for _ in ()).throw(HostCommandFailed("no")))
    assert run_vm() is None  # rolled back
    assert deliveries() == [("vm.failed", "vm", "web-1"), ("job.failed", "job", None)]
    assert "DEFINE failed" in Delivery.objects.get(event="vm.failed").payload["data"]["error"]


def test_a_delete_that_cannot_finish_sends_vm_failed_and_a_refused_one_only_job_failed(hook, fake, template):
    from vms import service
    from vms.models import Vm

    vm = new_vm(template, start=True)
    run_vm()
    Delivery.objects.all().delete()
    # the request refuses a running VM (no job); the worker refuses one started after the request
    fake.domains["web-1"]["state"] = "shut off"
    op = service.request_delete(Vm.objects.get(pk=vm.pk))
    fake.domains["web-1"]["state"] = "running"
    run_vm()
    assert HostJob.objects.get(pk=op.pk).error_code == "vm_running"
    assert deliveries() == [("job.failed", "job", None)]
    Delivery.objects.all().delete()
    fake.undeletable = ALL
    op = service.request_delete(Vm.objects.get(pk=vm.pk), force=True)
    run_vm()
    assert HostJob.objects.get(pk=op.pk).status == JobStatus.FAILED
    assert deliveries() == [("vm.failed", "vm", "web-1"), ("job.failed", "job", None)]
    assert "delete incomplete" in Delivery.objects.get(event="vm.failed").payload["data"]["error"]
