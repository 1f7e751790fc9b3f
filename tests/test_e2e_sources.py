"""Source disks vmseal cannot copy whole are refused before anything is created, naming the disk, on a
real test host: a qcow2 whose backing file is not one of the VM's own disks (it would be flattened into
the template), a qcow2 keeping its data in another file, a block device, a network disk (libvirt has
no file for it: it used to be dropped, and the template missed a disk). The VM list says why such a VM
cannot be used. No seal, no copy: the refusals happen at the request."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

IMAGES = "/var/lib/libvirt/images"
# name -> (the disk the refusal must name, what it must say)
BAD = {
    "src-backing": ("vda", f"backing file outside the VM's own disk files ({IMAGES}/src-base.qcow2)"),
    "src-datafile": ("vda", f"keeps its data in another file ({IMAGES}/src-data.raw)"),
    "src-block": ("vdb", "is a block device"),
    "src-network": ("vdb", "is a network disk"),
}


def _xml(name: str, disks: str) -> str:
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
            f"<devices>{disks}</devices></domain>")


def _file(path: str, dev: str) -> str:
    return (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{path}'/>"
            f"<target dev='{dev}' bus='virtio'/></disk>")


@pytest.fixture(scope="module")
def sources(test_host):
    """Shut-off VMs with such disks (empty images: nothing is read from them), and two that are fine."""
    th = test_host

    def img(name, *opts):
        th.exec("qemu-img", "create", "-q", "-f", "qcow2", *opts, f"{IMAGES}/{name}", "16M")
        return f"{IMAGES}/{name}"

    img("src-base.qcow2")  # a base image no VM has as its disk
    th.exec("truncate", "-s", "16M", f"{IMAGES}/src-data.raw")
    vms = {
        "src-ok": _file(img("src-ok.qcow2"), "vda"),
        # backed by another of its own disks: stays within the VM's own files
        "src-own": _file(img("src-own-top.qcow2", "-b", img("src-own-base.qcow2"), "-F", "qcow2"), "vda")
        + _file(f"{IMAGES}/src-own-base.qcow2", "vdb"),
        "src-backing": _file(img("src-top.qcow2", "-b", f"{IMAGES}/src-base.qcow2", "-F", "qcow2"), "vda"),
        "src-datafile": _file(img("src-df.qcow2", "-o", f"data_file={IMAGES}/src-data.raw"), "vda"),
        "src-block": _file(img("src-block-a.qcow2"), "vda")
        + "<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vmseal-no-such-dev'/>"
          "<target dev='vdb' bus='virtio'/></disk>",
        "src-network": _file(img("src-net-a.qcow2"), "vda")
        + "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
          "<source protocol='nbd' name='export'><host name='10.211.0.1' port='10809'/></source>"
          "<target dev='vdb' bus='virtio'/></disk>",
    }
    for name, disks in vms.items():
        (th.images / f"{name}.xml").write_text(_xml(name, disks))
        th.virsh("define", f"{IMAGES}/{name}.xml")
    try:
        yield th
    finally:
        for name in vms:
            th.virsh("undefine", name, check=False)
        th.exec("sh", "-c", f"rm -f {IMAGES}/src-*", check=False)


@pytest.fixture
def host(sources, db):
    from hostjobs import transport
    from hostjobs.models import Host

    h = Host.objects.create(name="src", address=sources.address, host_key=sources.host_key,
                            pool_path="/var/lib/vmseal/src", guestfs_backend_settings="force_tcg")
    yield h
    transport.close(h)


def _rows():
    from hostjobs.models import HostJob
    from templates.models import IdempotencyKey, Template, TemplateDisk
    from volumes.models import Volume

    return {m.__name__: m.objects.count() for m in (Template, TemplateDisk, Volume, HostJob, IdempotencyKey)}


@pytest.mark.parametrize("vm", sorted(BAD))
def test_a_vm_with_a_disk_that_cannot_be_copied_is_refused_naming_the_disk(api, host, sources, vm):
    disk, says = BAD[vm]
    rows, pool = _rows(), sources.exec("ls", "-a", "/var/lib/vmseal", check=False).stdout
    r = api.post("/api/templates/", {"name": f"t-{vm}", "host": host.pk, "vm": vm, "seal": False}, format="json",
                 HTTP_IDEMPOTENCY_KEY=f"k-{vm}")
    assert r.status_code == 400, r.content
    message = r.json()["vm"][0]
    assert f"disk {disk} (" in message, message
    assert says in message, message
    assert _rows() == rows, "nothing created"
    assert sources.exec("ls", "-a", "/var/lib/vmseal", check=False).stdout == pool, "nothing made on the host"
    assert sources.exec("test", "-e", host.pool_path, check=False).returncode != 0, "no pool was made"


def test_the_vm_list_says_why_a_vm_cannot_be_used(api, host, sources):
    r = api.get(f"/api/hosts/{host.pk}/vms/")
    assert r.status_code == 200, r.content
    vms = {v["name"]: v for v in r.json()}
    assert vms["src-ok"]["problems"] == []
    assert vms["src-own"]["problems"] == [], "a backing file that is one of the VM's own disks is fine"
    for vm, (disk, says) in BAD.items():
        assert len(vms[vm]["problems"]) == 1, vms[vm]
        assert f"disk {disk} (" in vms[vm]["problems"][0]
        assert says in vms[vm]["problems"][0]
    net = {d["target"]: d for d in vms["src-network"]["disks"]}
    assert net["vdb"]["type"] == "network", "listed, not dropped"


def test_the_new_template_form_refuses_such_a_vm_on_the_vm_field(admin_client, host, sources):
    rows = _rows()
    r = admin_client.post("/admin/templates/template/add/", {"host": host.pk, "vm_name": "src-network",
                                                             "name": "t-form"})
    assert r.status_code == 200, "the form is shown again, with the error"
    errors = r.context["adminform"].form.errors
    assert "disk vdb (" in errors.get("vm_name", [""])[0], errors
    assert _rows() == rows
