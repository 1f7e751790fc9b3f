"""One validation for every Host field (issue 11, section 3): the API (POST and PATCH), the admin's
add and change forms and ``host_add`` refuse each hostile value the same way, naming the field, with
nothing stored and nothing run; the libvirt URI quotes every component; a host's pool directory does
not move while it holds volumes, and a host that still has templates, volumes or jobs is not deleted.

No test host is needed: every refusal happens before anything would contact one. The libvirt URI test
runs the real libvirt client against a closed port on loopback."""

import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from tests.fixtures.hostjobs import KEY

pytestmark = pytest.mark.security

VALID = {"name": "hv", "address": "10.211.0.253", "port": 22, "ssh_user": "root", "host_key": KEY,
         "pool_path": "/var/lib/vmseal/templates", "vm_pool_path": "/var/lib/vmseal/vms",
         "guestfs_backend_settings": "", "max_parallel_seals": "",
         "seal_timeout": "", "copy_rate_limit": "", "callback_url": ""}
# Each value is refused by the model; before, at least the admin stored it (and the API most of them).
HOSTILE = [
    ("ssh_user", "a?command=/tmp/x.sh&"),  # libvirt ran /tmp/x.sh: the user name went into the URI as is
    ("ssh_user", "-oProxyCommand=x"),
    ("ssh_user", "root@10.211.0.9"),
    ("pool_path", "/"),
    ("pool_path", "/tmp"),  # libvirt's pool build stripped /tmp's sticky bit
    ("pool_path", "/etc"),
    ("pool_path", "/var/lib/../../etc"),
    ("pool_path", "var/lib/vmseal/templates"),
    ("pool_path", "/var/lib/vmseal/templates/"),
    ("pool_path", "//var/lib/vmseal/templates"),
    ("pool_path", "/dev/shm/vmseal"),
    ("pool_path", "/usr/local/vmseal"),
    ("pool_path", "/lib64/vmseal"),
    ("pool_path", "/home"),
    ("pool_path", "/var/lib"),
    ("pool_path", "/var/lib/vmseal/jobs"),
    ("pool_path", "/var/lib/vmseal/a b"),
    ("callback_url", "javascript:alert(1)"),
    ("callback_url", "file:///etc/passwd"),
    ("callback_url", "gopher://10.211.0.1/"),
    ("callback_url", "http:///api/callbacks/"),
    ("callback_url", "http://user:secret@10.211.0.1/api/callbacks/"),
    ("address", "0.0.0.0"),
    ("address", "ff02::1"),
    ("name", "evil\nname"),
    ("name", "\u202eevil"),
    ("host_key", "ssh-ed25519 !!!"),
    ("host_key", "not a key"),
    ("guestfs_backend_settings", "force_tcg;touch /tmp/x"),
]
API_VALID = {k: v for k, v in VALID.items() if v != ""}  # the form's blank numbers are the API's absent ones
CLI_OPTION = {"ssh_user": "--user", "pool_path": "--pool-path", "callback_url": "--callback-url",
              "host_key": "--host-key", "guestfs_backend_settings": "--guestfs-backend-settings"}


def state():
    """Everything a host's creation or change could leave: the rows, queued tasks, per-host SSH files."""
    from django_q.models import OrmQ

    from hostjobs.models import Host, HostJob

    hosts_dir = settings.DATA_DIR / "hosts"
    return (list(Host.objects.order_by("pk").values()), HostJob.objects.count(), OrmQ.objects.count(),
            sorted(os.listdir(hosts_dir)) if hosts_dir.exists() else [])


def admin_errors(r) -> dict:
    assert r.status_code == 200, f"the form was not refused ({r.status_code})"
    return {k: list(v) for k, v in r.context["adminform"].form.errors.items()}


@pytest.fixture
def stored(db):
    from hostjobs.models import Host

    return Host.objects.create(name="stored", address="10.211.0.252", host_key=KEY,
                               pool_path="/var/lib/vmseal/stored")


@pytest.mark.django_db
@pytest.mark.parametrize(("field", "value"), HOSTILE)
def test_each_hostile_value_is_refused_the_same_way_by_the_api_the_admin_and_the_cli(
        admin_client, stored, field, value):
    before = state()

    r = admin_client.post("/api/hosts/", {**API_VALID, field: value}, content_type="application/json")
    assert r.status_code == 400, r.content[:300]
    assert list(r.json()) == [field], r.json()
    message = r.json()[field]
    assert message
    assert state() == before

    r = admin_client.patch(f"/api/hosts/{stored.pk}/", {field: value}, content_type="application/json")
    assert r.status_code == 400, r.content[:300]
    assert r.json() == {field: message}
    assert state() == before

    r = admin_client.post("/admin/hostjobs/host/add/", {**VALID, field: value})
    assert admin_errors(r) == {field: message}
    assert state() == before

    change = {**VALID, "name": stored.name, "address": stored.address, "pool_path": stored.pool_path, field: value}
    r = admin_client.post(f"/admin/hostjobs/host/{stored.pk}/change/", change)
    assert admin_errors(r) == {field: message}
    assert state() == before

    args = [VALID["name"], VALID["address"], "--host-key", KEY]
    if field in ("name", "address"):
        args[("name", "address").index(field)] = value
    else:
        args.append(f"{CLI_OPTION[field]}={value}")
    with pytest.raises(CommandError) as e:
        call_command("host_add", *args)
    assert str(e.value) == f"{field}: {' '.join(message)}"
    assert state() == before


@pytest.mark.django_db
def test_dedicated_pool_directories_and_http_callbacks_are_accepted_everywhere(admin_client):
    from hostjobs.models import Host

    r = admin_client.post("/api/hosts/", {**API_VALID, "pool_path": "/var/lib/vmseal/api", "callback_url":
                                          "https://app.example:8443/api/callbacks/", "host_key": KEY + " c@x"},
                          content_type="application/json")
    assert r.status_code == 201, r.content
    assert Host.objects.get(name="hv").host_key == KEY, "stored as '<type> <base64>'"
    r = admin_client.post("/admin/hostjobs/host/add/", {**VALID, "name": "hv2", "pool_path": "/srv/vmseal/templates",
                                                         "callback_url": "http://10.211.0.1:8000/api/callbacks/",
                                                         "host_key": KEY + " root@hv2"})
    assert r.status_code == 302, r.context and r.context["adminform"].form.errors
    assert Host.objects.get(name="hv2").host_key == KEY
    call_command("host_add", "hv3", "fd00::3", "--host-key", KEY, "--pool-path", "/data/vmseal",
                 "--callback-url", "http://[fd00::1]:8000/api/callbacks/")
    assert Host.objects.get(name="hv3").pool_path == "/data/vmseal"


def test_the_libvirt_uri_quotes_every_component_and_brackets_ipv6():
    from urllib.parse import urlsplit

    from hostjobs.models import Host

    assert Host(address="fd00::5", port=2222).libvirt_uri == "qemu+ssh://root@[fd00::5]:2222/system"
    uri = Host(address="10.211.0.5", ssh_user="a?command=/tmp/x.sh&").libvirt_uri
    parts = urlsplit(uri)
    assert (parts.hostname, parts.port, parts.path, parts.query) == ("10.211.0.5", 22, "/system", "")


@pytest.mark.django_db
def test_a_stored_hostile_ssh_user_never_makes_libvirt_run_a_program(tmp_path, settings):
    """A row stored before validation (or past it) with ``a?command=<program>&`` as its user: the real
    libvirt client opens the connection with our pinned ssh wrapper, never with that program."""
    settings.DATA_DIR = tmp_path / "data"  # this host's SSH files (wrapper, known_hosts) go with the test
    from hostjobs import transport, virt
    from hostjobs.errors import HostError
    from hostjobs.models import Host

    marker = tmp_path / "ran"
    short = Path(tempfile.mkdtemp(prefix="v", dir="/tmp"))  # the user name holds 32 characters (PostgreSQL checks)
    evil = short / "e"
    evil.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    evil.chmod(stat.S_IRWXU)
    with socket.socket() as s:  # a closed port on loopback: our wrapper's ssh is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    host = Host.objects.create(name="legacy", address="127.0.0.1", port=port, host_key=KEY,
                               ssh_user=f"a?command={evil}&")
    try:
        with pytest.raises(HostError):
            virt.connection(host)
    finally:
        transport.close(host)
        shutil.rmtree(short)
    assert not marker.exists(), "libvirt ran the program named in the user name"


@pytest.fixture
def host(stored):
    """The shared model fixtures (a template with its volumes) on the stored host."""
    return stored


@pytest.fixture
def busy(template_with_volumes):
    """The stored host with a template, one of its volumes and the template's job."""
    return template_with_volumes.host


@pytest.mark.django_db
def test_the_pool_directory_does_not_move_while_the_host_has_volumes(admin_client, busy):
    before = state()
    r = admin_client.patch(f"/api/hosts/{busy.pk}/", {"pool_path": "/var/lib/vmseal/elsewhere"},
                           content_type="application/json")
    assert r.status_code == 409, r.content[:300]
    assert list(r.json()) == ["pool_path"]
    assert "has volumes" in r.json()["pool_path"][0]
    assert state() == before

    change = {**VALID, "name": busy.name, "address": busy.address, "pool_path": "/var/lib/vmseal/elsewhere"}
    errors = admin_errors(admin_client.post(f"/admin/hostjobs/host/{busy.pk}/change/", change))
    assert list(errors) == ["pool_path"]
    assert "has volumes" in errors["pool_path"][0]
    assert state() == before

    # other fields still change; the pool directory too, once the volumes are gone
    r = admin_client.patch(f"/api/hosts/{busy.pk}/", {"seal_timeout": 600, "pool_path": busy.pool_path},
                           content_type="application/json")
    assert r.status_code == 200, r.content[:300]
    busy.volumes.all().delete()
    r = admin_client.patch(f"/api/hosts/{busy.pk}/", {"pool_path": "/var/lib/vmseal/elsewhere"},
                           content_type="application/json")
    assert r.status_code == 200, r.content[:300]


@pytest.mark.django_db
def test_a_host_with_templates_volumes_or_jobs_is_not_deleted(admin_client, busy):
    from hostjobs.models import Host

    before = state()
    r = admin_client.delete(f"/api/hosts/{busy.pk}/")
    assert r.status_code == 409, r.content[:300]
    detail = r.json()["detail"]
    assert all(w in detail for w in ("1 template", "1 volume", "1 host job")), detail
    assert state() == before

    for r in (admin_client.post(f"/admin/hostjobs/host/{busy.pk}/delete/", {"post": "yes"}),
              admin_client.post("/admin/hostjobs/host/", {"action": "delete_selected", "_selected_action": [busy.pk],
                                                          "post": "yes"})):
        assert r.status_code == 200
        assert detail.encode() in r.content, "the page says why, as the API does"
    assert state() == before

    free = Host.objects.create(name="free", address="10.211.0.251", host_key=KEY)
    assert admin_client.delete(f"/api/hosts/{free.pk}/").status_code == 204
    assert not Host.objects.filter(pk=free.pk).exists()
