"""The Vm model's rules (vms.validators, Vm.clean), its guarded transitions (vms.states), Volume's
parent in its metadata, and Host.vm_pool_path's."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from hostjobs.errors import InvalidTransition
from hostjobs.models import Host
from tests.fixtures.templates import create_template

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK"
HASH = "$6$saltsalt$" + "h" * 86


@pytest.fixture
def host(db):
    return Host.objects.create(name="h", address="10.211.0.251", host_key=KEY)


def _vm(host, **fields):
    from templates.models import Template
    from vms.models import Vm

    t = Template.objects.filter(name="tpl").first() or create_template(host, "tpl", disks=1)
    return Vm(**{"name": "web-1", "template": t, "host": host, **fields})


def _errors(vm) -> dict:
    try:
        vm.full_clean(validate_constraints=False)
    except ValidationError as e:
        return e.message_dict
    return {}


@pytest.mark.parametrize("name", ["web-1", "Web_1.a", "a", "x" * 63])
def test_good_names(host, name):
    assert "name" not in _errors(_vm(host, name=name, hostname="web-1"))


@pytest.mark.parametrize("name", ["", "-a", ".a", "a.", "a b", "a/b", "../a", "a;b", "a$b", "<a>", "a'b", "x" * 64,
                                  "a\nb", "ä"])
def test_hostile_names(host, name):
    assert "name" in _errors(_vm(host, name=name, hostname="web-1"))


def test_the_hostname_defaults_to_a_name_that_is_one(host):
    vm = _vm(host)
    assert _errors(vm) == {}
    assert vm.hostname == "web-1"
    assert "hostname" in _errors(_vm(host, name="Web_1"))


@pytest.mark.parametrize(("keys", "ok"), [
    ([KEY], True), ([KEY + " a comment with spaces"], True), ([], True),
    (["ssh-ed25519"], False), ([KEY.replace("AAAAC3", "AAAAB3")], False), ([KEY + " back\\"], False),
    ([KEY + "\n" + KEY], False), (['from="*" ' + KEY], False), ([KEY] * 33, False), (KEY, False), ([1], False),
])
def test_ssh_keys(host, keys, ok):
    assert ("ssh_authorized_keys" not in _errors(_vm(host, ssh_authorized_keys=keys))) is ok


@pytest.mark.parametrize(("value", "ok"), [
    (HASH, True), ("$y$j9T$abcdefghijklmnop$" + "A" * 43, True), ("", True),
    ("hunter2", False), ("$1$salt$" + "x" * 22, False), (HASH + ":", False), (HASH + "\n", False),
    ("$6$salt salt$xx", False),
])
def test_password_hashes(host, value, ok):
    vm = _vm(host, root_password_hash=value)
    assert ("root_password_hash" not in _errors(vm)) is ok
    if ok and value:
        assert vm.root_password_set is True


def test_state_moves_only_through_transitions(host):
    from templates.states import ProtectedState
    from vms.models import Vm

    vm = _vm(host)
    vm.full_clean(validate_constraints=False)
    vm.save()
    with pytest.raises(ProtectedState):
        vm.status = "ok"
    with pytest.raises(InvalidTransition):
        vm.finish()  # CREATE_VM is not the last step
    with pytest.raises(InvalidTransition):
        vm.advance("DEFINE")  # not the next step
    vm.advance("CREATE_DISKS")
    vm.advance("IDENTITY", identity_appliance=False, root_password_hash="")
    with pytest.raises(ValueError, match="not something a step records"):
        vm.advance("DEFINE", name="x")
    vm.advance("DEFINE")
    with pytest.raises(InvalidTransition):
        vm.advance("START")  # start=False: DEFINE is the last step
    vm.finish()
    assert Vm.objects.filter(pk=vm.pk, status="ok", phase="DONE").exists()
    stale = Vm.objects.get(pk=vm.pk)
    vm.lock_for_delete(None, force=True)
    with pytest.raises(InvalidTransition):
        stale.lock_for_delete(None)  # the row moved meanwhile: the second writer loses
    vm.delete_refused("running")
    assert Vm.objects.get(pk=vm.pk).status == "ok"


def test_a_thin_volume_names_its_parent_in_its_metadata(host):
    from volumes.models import Volume

    parent = Volume.objects.create(host=host, type="SHARED", legality="LEGAL")
    child = Volume(host=host, parent=parent)
    child.path = f"{host.vm_pool_path}/{child.id}.qcow2"
    child.save()
    assert child.meta()["parent"] == str(parent.id)
    assert parent.meta()["parent"] is None
    assert child.path.startswith("/var/lib/vmseal/vms/")


@pytest.mark.parametrize(("pool", "vm_pool", "field"), [
    ("/var/lib/vmseal/templates", "/var/lib/vmseal/templates", "vm_pool_path"),
    ("/var/lib/vmseal/templates", "/var/lib/vmseal/templates/vms", "vm_pool_path"),
    ("/srv/vmseal/a/b", "/srv/vmseal/a", "vm_pool_path"),
    ("/var/lib/vmseal/templates", "/var/lib/vmseal/console", "vm_pool_path"),
    ("/var/lib/vmseal/templates", "/etc", "vm_pool_path"),
    ("/var/lib/vmseal/templates", "/srv/vms", None),
])
def test_the_vm_pool_is_its_own_directory(host, pool, vm_pool, field):
    host.pool_path, host.vm_pool_path = pool, vm_pool
    try:
        host.full_clean()
        errors = {}
    except ValidationError as e:
        errors = e.message_dict
    assert list(errors) == ([field] if field else [])
