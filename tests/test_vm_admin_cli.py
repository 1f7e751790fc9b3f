"""The VM admin ("New VM" from a template's page, the list, the detail, delete) and the CLI (vm_create,
vm_delete): the same model validation as the API, the same service; refusals change nothing."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from hostjobs import port
from hostjobs.models import Host, HostJob
from tests.fixtures.templates import create_template
from tests.utils.fakehost import FakeHost

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK"
HASH = "$6$saltsalt$" + "h" * 86


@pytest.fixture
def fake(db, monkeypatch):
    from hostjobs import runner

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
    fake.calls.clear()
    return t


def test_the_admin_makes_a_vm_from_a_templates_page(admin_client, fake, template):
    from vms.models import Vm

    page = admin_client.get(f"/admin/templates/template/{template.pk}/change/").content.decode()
    assert f"/admin/vms/vm/new/?template={template.pk}" in page
    assert admin_client.get(f"/admin/vms/vm/new/?template={template.pk}").status_code == 200
    form = {"template": template.pk, "name": "web-1", "clone": "thin", "hostname": "", "ssh_authorized_keys": KEY,
            "root_password_hash": HASH}
    r = admin_client.post("/admin/vms/vm/new/", {**form, "name": "../x;"})
    assert r.status_code == 200
    assert "name" in r.context["form"].errors
    r = admin_client.post("/admin/vms/vm/new/", {**form, "root_password_hash": "hunter2"})
    assert "root_password_hash" in r.context["form"].errors
    assert not Vm.objects.exists()
    r = admin_client.post("/admin/vms/vm/new/", form)
    assert r.status_code == 302, r.context["form"].errors if r.context else r
    vm = Vm.objects.get()
    assert (vm.name, vm.clone, vm.root_password_set, vm.ssh_authorized_keys) == ("web-1", "thin", True, [KEY])
    assert fake.calls == []
    assert "web-1" in admin_client.get("/admin/vms/vm/").content.decode()
    detail = admin_client.get(f"/admin/vms/vm/{vm.pk}/change/").content.decode()
    assert "web-1" in detail
    assert HASH not in detail


def test_the_admin_refuses_to_delete_a_template_backing_a_vm_and_deletes_vms_by_a_job(admin_client, fake, template):
    from django.contrib.messages import get_messages

    from vms import service
    from vms.models import Vm

    vm = Vm(name="web-1", template=template, host=template.host)
    vm.full_clean(validate_constraints=False)
    service.start(vm)
    jobs = HostJob.objects.count()
    r = admin_client.post(f"/admin/templates/template/{template.pk}/delete/", {"post": "yes"}, follow=True)
    page = r.content.decode()
    # the service's check (the API's 409, sealing.flow.holders: the VM is still being made) refuses it and
    # the admin says so, naming the VM
    assert any("web-1 (thin, CREATE_VM)" in str(m) for m in get_messages(r.wsgi_request)), page[-2000:]
    template.refresh_from_db()
    assert template.status == "ok"
    assert HostJob.objects.count() == jobs, "no delete job"
    Vm.objects.filter(pk=vm.pk).update(status="ok", phase="DONE", clone="full")
    page = admin_client.get(f"/admin/templates/template/{template.pk}/delete/").content.decode()
    assert "web-1" not in page, "a full clone that is done does not hold its template (the delete detaches it)"
    Vm.objects.filter(pk=vm.pk).update(clone="thin")
    admin_client.post(f"/admin/vms/vm/{vm.pk}/delete/", {"post": "yes"})
    vm = Vm.objects.get(pk=vm.pk)
    assert vm.status == "locked"
    assert HostJob.objects.get(pk=vm.job_id).action == "delete_vm"


def test_the_cli_makes_and_deletes_a_vm(fake, template, tmp_path, capsys):
    from vms.models import Vm

    keys = tmp_path / "keys"
    keys.write_text(KEY + " ops@example\n\n")
    hashfile = tmp_path / "hash"
    hashfile.write_text(HASH + "\n")
    with pytest.raises(CommandError, match="^name: "):
        call_command("vm_create", "tpl", "bad;name", "--hostname", "web-1")
    with pytest.raises(CommandError, match="identity.root_password_hash: "):
        call_command("vm_create", "tpl", "web-1", "--root-password-hash-file", str(keys))
    with pytest.raises(CommandError, match="no template"):
        call_command("vm_create", "nope", "web-1")
    assert not Vm.objects.exists()
    call_command("vm_create", "tpl", "web-1", "--clone", "full", "--ssh-key", str(keys),
                 "--root-password-hash-file", str(hashfile), "--start")
    vm = Vm.objects.get()
    assert (vm.clone, vm.start, vm.ssh_authorized_keys, vm.root_password_hash) == (
        "full", True, [KEY + " ops@example"], HASH)
    assert f"job {vm.job_id}" in capsys.readouterr().out
    with pytest.raises(CommandError, match="has a job running"):
        call_command("vm_delete", "web-1")
    Vm.objects.filter(pk=vm.pk).update(status="ok", phase="DONE")
    call_command("vm_delete", "web-1")
    vm = Vm.objects.get()
    assert vm.status == "locked"
    assert HostJob.objects.get(pk=vm.job_id).action == "delete_vm"
    assert fake.calls == [["domain_info", "web-1"]], "only the read-only look at its state"


def test_the_admin_deletes_a_running_vm_only_with_the_force_box_ticked(admin_client, fake, template):
    from django.contrib.messages import get_messages

    from audit.models import Event
    from vms import flow, service
    from vms.models import Vm

    for d in template.disks.select_related("volume"):
        fake.volumes[str(d.volume_id)] = {"id": str(d.volume_id), "type": "SHARED", "legality": "LEGAL",
                                          "generation": d.volume.generation, "parent": None, "format": "qcow2"}
    vm = Vm(name="web-1", template=template, host=template.host, start=True)
    vm.full_clean(validate_constraints=False)
    service.start(vm)
    flow.run(vm.pk)
    assert fake.domains["web-1"]["state"] == "running"
    url = f"/admin/vms/vm/{vm.pk}/delete/"

    page = admin_client.get(url).content.decode()
    assert "<strong>running</strong>" in page
    assert 'name="force" value="true"' in page
    jobs = HostJob.objects.count()
    r = admin_client.post(url, {"post": "yes"}, follow=True)  # the box not ticked
    said = [str(m) for m in get_messages(r.wsgi_request)]
    assert any("is running" in m and "force" in m for m in said), said
    assert not any("deleted successfully" in m for m in said)
    assert (Vm.objects.get(pk=vm.pk).status, HostJob.objects.count()) == ("ok", jobs), "nothing asked of the host"
    assert fake.domains["web-1"]["state"] == "running"
    assert Event.objects.get(action="vm.delete").outcome == "refused"
    r = admin_client.post(url, {"post": "yes", "force": "yes please"})  # only "true" forces
    assert Vm.objects.get(pk=vm.pk).status == "ok"

    r = admin_client.post(url, {"post": "yes", "force": "true"})
    assert r.status_code == 302
    row = Vm.objects.get(pk=vm.pk)
    assert (row.status, row.force_delete) == ("locked", True)
    op = HostJob.objects.get(pk=row.job_id)
    assert op.action == "delete_vm"
    flow.run(vm.pk)
    op.refresh_from_db()
    assert op.status == "done"
    assert ["destroy_domain", "web-1"] in fake.calls, "powered off first"
    assert not Vm.objects.filter(pk=vm.pk).exists()
    assert "web-1" not in fake.domains
    assert list(Event.objects.filter(action="vm.delete").values_list("outcome", flat=True).order_by("when")) == [
        "refused", "refused", "accepted"]


def test_the_delete_page_of_a_stopped_vm_has_no_force_box(admin_client, fake, template):
    from vms.models import Vm

    vm = Vm.objects.create(name="web-2", template=template, host=template.host, hostname="web-2", status="ok",
                           phase="DONE")
    page = admin_client.get(f"/admin/vms/vm/{vm.pk}/delete/").content.decode()
    assert 'name="force"' not in page
    admin_client.post(f"/admin/vms/vm/{vm.pk}/delete/", {"post": "yes", "force": "true"})
    assert Vm.objects.get(pk=vm.pk).status == "locked"
