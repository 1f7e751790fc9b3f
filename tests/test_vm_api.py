"""The VM API: POST /api/vms/ (202 + its job), its refusals (each a 4xx naming the field, with the
database and the host as they were), reads without the secret, permissions, Idempotency-Key, DELETE
(409 while running unless forced) and the template's delete protection. The host is the in-process fake
behind the port (every call to it is recorded: a refusal makes none)."""

from __future__ import annotations

import pytest

from hostjobs import port, runner
from hostjobs.models import Host, HostJob
from tests.fixtures.templates import create_template
from tests.utils.fakehost import FakeHost
from tests.utils.users import user_with

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK"
USER_KEY = KEY + " ops@example"
HASH = "$6$saltsalt$" + "h" * 86


@pytest.fixture
def fake(db, monkeypatch):
    monkeypatch.setattr(runner, "POLL_MIN", 0.0)
    monkeypatch.setattr(runner, "WATCH", 0.0)
    host = FakeHost(disks=1)
    with port.use(lambda h: host):
        yield host


@pytest.fixture
def host(db):
    return Host.objects.create(name="h", address="10.211.0.251", host_key=KEY)


@pytest.fixture
def template(host, fake):
    from templates import hardware as domain

    t = create_template(host, "tpl", disks=1, sealed=True, seal=True, hardware=domain.scrub(fake.domain_xml("vm")))
    for d in t.disks.select_related("volume"):
        fake.volumes[str(d.volume_id)] = {"id": str(d.volume_id), "type": "SHARED", "legality": "LEGAL",
                                          "generation": d.volume.generation, "parent": None, "format": "qcow2"}
    fake.calls.clear()  # the fixture's own read of the fake domain
    return t


def state():
    """What a refusal must leave as it was: the VM, job and volume rows."""
    from vms.models import Vm, VmDisk
    from volumes.models import Volume

    return (list(Vm.objects.values_list("pk", "name", "status")), HostJob.objects.count(),
            VmDisk.objects.count(), Volume.objects.count())


def body(template, **over):
    identity = over.pop("identity", {"ssh_authorized_keys": [USER_KEY], "root_password_hash": HASH})
    return {"template": template.pk, "name": "web-1", "identity": identity, **over}


def test_a_vm_is_accepted_with_its_job_and_its_secret_is_never_shown(api, fake, template):
    from vms.models import Vm

    r = api.post("/api/vms/", body(template, start=True), format="json")
    assert r.status_code == 202, r.content
    job = r.json()
    assert r["Location"] == f"/api/jobs/{job['id']}/"
    vm = Vm.objects.get(name="web-1")
    assert (vm.status, vm.phase, vm.clone, vm.host_id, vm.start) == ("locked", "CREATE_VM", "thin", template.host_id,
                                                                      True)
    assert str(vm.job_id) == job["id"]
    assert vm.hostname == "web-1"
    assert vm.ssh_authorized_keys == [USER_KEY]
    assert fake.calls == [], "nothing reaches the host from the request: the worker does it"
    detail = api.get(f"/api/vms/{vm.pk}/").json()
    assert detail["root_password_set"] is True
    assert "root_password_hash" not in detail
    assert HASH not in api.get("/api/vms/").content.decode()
    assert HASH not in api.get(f"/api/vms/{vm.pk}/").content.decode()
    assert HASH not in api.get(f"/api/jobs/{job['id']}/").content.decode()


HOSTILE_NAMES = ["a;rm -rf /", "../../etc/passwd", "web/1", "<name>x</name>", "a b", "-rf", "$(reboot)", "",
                 "x" * 64, "web\n1", "wéb"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_refused_naming_the_field(api, fake, template, name):
    before = state()
    r = api.post("/api/vms/", body(template, name=name, identity={"hostname": "web-1"}), format="json")
    assert r.status_code == 400, r.content
    assert list(r.json()) == ["name"]
    assert state() == before
    assert fake.calls == []


@pytest.mark.parametrize(("identity", "field"), [
    ({"hostname": "web_1"}, "hostname"),
    ({"hostname": "-web"}, "hostname"),
    ({"hostname": "web-1\n"}, "hostname"),
    ({"hostname": "a" * 64}, "hostname"),
    ({"ssh_authorized_keys": ["not a key"]}, "ssh_authorized_keys"),
    ({"ssh_authorized_keys": [KEY + "\nssh-rsa AAAA"]}, "ssh_authorized_keys"),
    ({"ssh_authorized_keys": ['command="/bin/sh" ' + KEY]}, "ssh_authorized_keys"),
    ({"ssh_authorized_keys": "ssh-ed25519 AAAA"}, "ssh_authorized_keys"),
    ({"root_password_hash": "hunter2"}, "root_password_hash"),
    ({"root_password_hash": HASH + ":0:99999"}, "root_password_hash"),
    ({"root_password_hash": HASH + "\nroot::0"}, "root_password_hash"),
])
def test_bad_identities_are_refused_naming_the_field(api, fake, template, identity, field):
    before = state()
    r = api.post("/api/vms/", body(template, identity=identity), format="json")
    assert r.status_code == 400, r.content
    assert list(r.json()) == ["identity"]
    assert list(r.json()["identity"]) == [field]
    assert state() == before
    assert fake.calls == []


def test_a_name_that_is_no_hostname_needs_one(api, fake, template):
    r = api.post("/api/vms/", body(template, name="Web_1", identity={}), format="json")
    assert r.status_code == 400
    assert list(r.json()) == ["identity"]
    assert "hostname" in r.json()["identity"]
    r = api.post("/api/vms/", body(template, name="Web_1", identity={"hostname": "web-1"}), format="json")
    assert r.status_code == 202, r.content


@pytest.mark.parametrize(("change", "status", "field"), [
    ({"status": "failed"}, 409, "template"),
    ({"status": "locked", "phase": "SEAL"}, 409, "template"),
    ({"hardware": ""}, 409, "template"),
])
def test_an_unusable_template_is_a_409_before_anything_is_made(api, fake, template, change, status, field):
    from templates.models import Template

    Template.objects.filter(pk=template.pk).update(**change)
    before = state()
    r = api.post("/api/vms/", body(template), format="json")
    assert r.status_code == status, r.content
    assert list(r.json()) == [field]
    assert state() == before
    assert fake.calls == []


def test_hardware_whose_disks_are_not_the_templates_is_a_409(api, fake, template):
    from templates import hardware as domain
    from templates.models import Template

    two = FakeHost(disks=2)
    Template.objects.filter(pk=template.pk).update(hardware=domain.scrub(two.domain_xml("vm")))
    before = state()
    r = api.post("/api/vms/", body(template), format="json")
    assert r.status_code == 409
    assert "vdb" in r.json()["template"][0]
    assert state() == before


def test_volumes_not_legal_and_shared_are_a_409(api, fake, template):
    from volumes.models import Volume

    Volume.objects.filter(pk=template.disks.get().volume_id).update(legality="ILLEGAL")
    before = state()
    r = api.post("/api/vms/", body(template), format="json")
    assert r.status_code == 409
    assert "LEGAL, SHARED" in r.json()["template"][0]
    assert state() == before


def test_unknown_and_other_hosts_and_duplicate_names_are_refused(api, fake, template):
    before = state()
    r = api.post("/api/vms/", body(template, host=999), format="json")
    assert (r.status_code, list(r.json())) == (400, ["host"])
    other = Host.objects.create(name="other", address="10.211.0.252", host_key=KEY)
    r = api.post("/api/vms/", body(template, host=other.pk), format="json")
    assert (r.status_code, list(r.json())) == (409, ["host"])
    assert "no copy on host other" in r.json()["host"][0]
    r = api.post("/api/vms/", {**body(template), "template": 999}, format="json")
    assert (r.status_code, list(r.json())) == (400, ["template"])
    assert state() == before
    assert api.post("/api/vms/", body(template), format="json").status_code == 202
    before = state()
    r = api.post("/api/vms/", body(template), format="json")
    assert (r.status_code, list(r.json())) == (400, ["name"])
    assert state() == before
    assert fake.calls == []


def test_permissions(client, fake, template):
    from rest_framework.test import APIClient

    viewer = APIClient()
    viewer.force_authenticate(user_with("viewer", "view_vm"))
    assert viewer.get("/api/vms/").status_code == 200
    assert viewer.post("/api/vms/", body(template), format="json").status_code == 403
    nobody = APIClient()
    nobody.force_authenticate(user_with("nobody"))
    assert nobody.get("/api/vms/").status_code == 403
    maker = APIClient()
    maker.force_authenticate(user_with("maker", "add_vm", "view_vm"))
    r = maker.post("/api/vms/", body(template), format="json")
    assert r.status_code == 202
    from vms.models import Vm

    vm = Vm.objects.get()
    assert maker.delete(f"/api/vms/{vm.pk}/").status_code == 403


def test_an_idempotency_key_returns_the_same_job(api, fake, template):
    from vms.models import Vm

    r1 = api.post("/api/vms/", body(template), format="json", HTTP_IDEMPOTENCY_KEY="k1")
    r2 = api.post("/api/vms/", body(template), format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert (r1.status_code, r2.status_code) == (202, 202)
    assert r1.json()["id"] == r2.json()["id"]
    assert Vm.objects.count() == 1


def test_delete_running_is_409_unless_forced_and_a_backing_template_is_409(api, fake, template):
    from vms import flow
    from vms.models import Vm

    r = api.post("/api/vms/", body(template, start=True), format="json")
    vm = Vm.objects.get()
    flow.run(vm.pk)
    assert fake.domains["web-1"]["state"] == "running"
    r = api.delete(f"/api/templates/{template.pk}/")
    assert r.status_code == 409
    assert "web-1 (thin)" in r.json()["template"][0]
    before = state()
    r = api.delete(f"/api/vms/{vm.pk}/")
    assert r.status_code == 409
    assert "running" in r.json()["vm"][0]
    assert state() == before
    r = api.delete(f"/api/vms/{vm.pk}/?force=maybe")
    assert (r.status_code, list(r.json())) == (400, ["force"])
    r = api.delete(f"/api/vms/{vm.pk}/?force=true")
    assert r.status_code == 202
    assert r["Location"] == f"/api/jobs/{r.json()['id']}/"
    flow.run(vm.pk)
    assert not Vm.objects.exists()
    assert not fake.domains
    assert api.delete(f"/api/templates/{template.pk}/").status_code == 202, "no VM backed by it any more"


def test_a_request_must_name_a_template_and_an_answer_may_show_none(api, fake, template):
    """``template`` is nullable in answers (a full clone whose template was deleted), never in requests."""
    from vms.models import Vm

    before = state()
    r = api.post("/api/vms/", {**body(template), "template": None}, format="json")
    assert r.status_code == 400, r.content
    assert "template" in r.json()
    assert state() == before
    vm = Vm.objects.create(name="orphan-1", host=template.host, clone="full", status="ok", phase="DONE")
    assert api.get(f"/api/vms/{vm.pk}/").json()["template"] is None
