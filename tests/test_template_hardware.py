"""templates.hardware's pure logic: the template's hardware (the source VM's domain XML scrubbed of identity and
state) and a VM's domain built from it. The XML is checked against libvirt's own schema
(virt-xml-validate, Debian's libvirt-clients + libxml2-utils)."""

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter

import pytest

from templates.hardware import HardwareError, build, disk_targets, new_mac, scrub
from tests.fixtures.testhosts import guestdisk

# A running q35/UEFI VM's live XML (what virDomainGetXMLDesc gives), with everything that makes a machine
# one machine: each value below that identifies it is listed in IDENTIFYING.
RICH = """<domain type='kvm' id='42' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>src-vm-secretname</name>
  <uuid>6a1f3c2e-9d4b-4e8a-b7c1-0f2e3d4c5b6a</uuid>
  <genid>43dc0cf8-809b-4adb-9bea-a9abb5f3d90d</genid>
  <title>Title of the source</title>
  <description>Description: owned by alice</description>
  <metadata>
    <app:owner xmlns:app='http://example.org/app/1'>alice@example.org</app:owner>
  </metadata>
  <memory unit='KiB'>1048576</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <sysinfo type='smbios'>
    <system>
      <entry name='manufacturer'>Acme</entry>
      <entry name='serial'>SYSINFO-SERIAL-0001</entry>
    </system>
  </sysinfo>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <loader readonly='yes' secure='no' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/var/lib/libvirt/qemu/nvram/NVRAM-OF-SOURCE_VARS.fd</nvram>
    <kernel>/var/lib/vmseal/boot/vmlinuz-6.1.0-cloud-amd64</kernel>
    <initrd>/var/lib/vmseal/boot/initrd.img-6.1.0-cloud-amd64</initrd>
    <cmdline>root=/dev/vda console=ttyS0 quiet</cmdline>
    <smbios mode='sysinfo'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode='custom' match='exact' check='none'>
    <model fallback='forbid'>qemu64</model>
  </cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' discard='unmap'/>
      <source file='/var/lib/libvirt/images/SOURCE-ROOT.qcow2' index='2'>
        <seclabel model='dac' relabel='yes'>
          <label>+64055:+64055</label>
        </seclabel>
      </source>
      <backingStore type='file' index='3'>
        <format type='qcow2'/>
        <source file='/var/lib/libvirt/images/SOURCE-BASE.qcow2'/>
        <backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <serial>DISKSERIAL-ROOT-77</serial>
      <alias name='ALIAS-virtio-disk0'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <source dev='/dev/vg0/SOURCE-DATA'/>
      <target dev='vdb' bus='virtio'/>
      <alias name='ALIAS-virtio-disk1'/>
      <address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/SOURCE-INSTALL.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
      <alias name='ALIAS-sata0-0-0'/>
      <address type='drive' controller='0' bus='0' target='0' unit='0'/>
    </disk>
    <controller type='sata' index='0'>
      <alias name='ALIAS-ide'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x1f' function='0x2'/>
    </controller>
    <controller type='pci' index='0' model='pcie-root'>
      <alias name='ALIAS-pcie.0'/>
    </controller>
    <controller type='virtio-serial' index='0'/>
    <interface type='network'>
      <mac address='52:54:00:aa:bb:01'/>
      <source network='default' portid='0f8e2b4a-8c1d-4f1e-9a2b-3c4d5e6f7a8b' bridge='virbr0'/>
      <target dev='vnet17'/>
      <model type='virtio'/>
      <alias name='ALIAS-net0'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:aa:bb:02'/>
      <source bridge='br-lan'/>
      <virtualport type='openvswitch'>
        <parameters interfaceid='d1c2b3a4-0000-4111-8222-933344445555'/>
      </virtualport>
      <target dev='vnet18'/>
      <model type='e1000e'/>
    </interface>
    <serial type='pty'>
      <source path='/dev/pts/7'/>
      <log file='/var/log/libvirt/qemu/SOURCE-serial0.log' append='on'/>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
      <alias name='ALIAS-serial0'/>
    </serial>
    <console type='pty' tty='/dev/pts/7'>
      <source path='/dev/pts/7'/>
      <log file='/var/log/libvirt/qemu/SOURCE-serial0.log' append='on'/>
      <target type='serial' port='0'/>
    </console>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-42-SOURCE/org.qemu.guest_agent.0'/>
      <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>
      <address type='virtio-serial' controller='0' bus='0' port='1'/>
    </channel>
    <channel type='file'>
      <source path='/var/log/SOURCE-channel.out'/>
      <target type='virtio' name='org.example.dump'/>
    </channel>
    <input type='tablet' bus='usb'/>
    <tpm model='tpm-crb'>
      <backend type='emulator' version='2.0' persistent_state='yes'/>
    </tpm>
    <graphics type='vnc' port='5907' autoport='no' listen='127.0.0.1' passwd='hunter2vnc'
              passwdValidTo='2030-01-01T00:00:00'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <video>
      <model type='virtio' heads='1' primary='yes'/>
    </video>
    <memballoon model='virtio'/>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
    </rng>
    <vsock model='virtio'>
      <cid auto='no' address='1717'/>
    </vsock>
  </devices>
  <seclabel type='dynamic' model='apparmor' relabel='yes'>
    <label>libvirt-6a1f3c2e-9d4b-4e8a-b7c1-0f2e3d4c5b6a</label>
    <imagelabel>libvirt-6a1f3c2e-9d4b-4e8a-b7c1-0f2e3d4c5b6a</imagelabel>
  </seclabel>
  <seclabel type='dynamic' model='dac' relabel='yes'>
    <label>+64055:+64055</label>
    <imagelabel>+64055:+64055</imagelabel>
  </seclabel>
  <qemu:commandline>
    <qemu:arg value='-no-user-config'/>
  </qemu:commandline>
</domain>
"""
# Everything in RICH that belongs to that one machine (or to its host-side resources).
IDENTIFYING = [
    "src-vm-secretname", "6a1f3c2e", "43dc0cf8", "Title of the source", "alice", "SYSINFO-SERIAL-0001", "Acme",
    "NVRAM-OF-SOURCE", "SOURCE-ROOT", "SOURCE-BASE", "SOURCE-DATA", "SOURCE-INSTALL", "DISKSERIAL-ROOT-77",
    "+64055", "ALIAS-", "52:54:00:aa:bb", "0f8e2b4a", "d1c2b3a4", "vnet17", "vnet18", "/dev/pts/7",
    "SOURCE-serial0.log", "domain-42-SOURCE", "SOURCE-channel.out", "hunter2vnc", "2030-01-01", "5907", "1717",
    "persistent_state", "'connected'", '"connected"', "id=",
]
VM_UUID = "0e7c1a52-4c2b-4d55-9a3e-5f8d7b6c4a21"
VM_DISKS = [("vda", "/var/lib/vmseal/vms/0e7c1a52-vda.qcow2", "qcow2"),
            ("vdb", "/var/lib/vmseal/vms/0e7c1a52-vdb.qcow2", "qcow2")]
SEED = "/var/lib/vmseal/vms/0e7c1a52-seed.iso"
CONSOLE_LOG = "/var/lib/vmseal/console/0e7c1a52-4c2b-4d55-9a3e-5f8d7b6c4a21.log"


def _tags(xml):
    return Counter(el.tag for el in ET.fromstring(xml).iter())


def _rich_vm(**kw):
    args = {"name": "web-1", "uuid": VM_UUID, "disks": VM_DISKS, "seed": SEED, "console_log": CONSOLE_LOG} | kw
    return build(scrub(RICH), **args)


def test_the_rich_source_is_a_valid_domain(tmp_path):
    """The fixture itself is what libvirt accepts (otherwise scrub's tests prove little)."""
    _validate(tmp_path, RICH)


def test_scrub_leaves_nothing_of_the_source_machine():
    hw = scrub(RICH)
    for value in IDENTIFYING:
        assert value not in hw, value
    root = ET.fromstring(hw)
    for tag in ("name", "uuid", "genid", "title", "description", "metadata", "sysinfo", "seclabel", "alias",
                "mac", "backingStore", "log", "smbios"):
        assert root.find(f".//{tag}") is None, tag
    assert "id" not in root.attrib
    nvram = root.find("os/nvram")  # the machine's variables go, the template they are made from stays
    assert nvram.attrib == {"template": "/usr/share/OVMF/OVMF_VARS_4M.fd"}
    assert nvram.text is None
    assert [d.get("device") for d in root.iter("disk")] == ["disk", "disk"]  # the CD-ROM is gone
    for disk in root.iter("disk"):
        assert disk.find("source") is None
        assert disk.find("serial") is None
    for iface in root.iter("interface"):
        assert iface.find("target") is None
    assert [c.find("target").get("name") for c in root.iter("channel")] == ["org.qemu.guest_agent.0"]
    for chr_dev in [*root.iter("serial"), *root.iter("console"), *root.iter("channel")]:
        assert chr_dev.find("source") is None
        assert chr_dev.find("log") is None
    graphics = root.find("devices/graphics")
    assert graphics.get("autoport") == "yes"
    assert "passwd" not in graphics.attrib
    assert "port" not in graphics.attrib
    assert root.find("devices/vsock/cid").attrib == {"auto": "yes"}
    assert root.find("devices/tpm/backend").attrib == {"type": "emulator", "version": "2.0"}


def test_scrub_removes_seclabels_wherever_they_are():
    """Not only the domain's and those inside the disk sources it drops: one in a kept element goes too."""
    xml = ("<domain type='kvm'><name>n</name><devices><hostdev mode='subsystem' type='usb'><source>"
           "<vendor id='0x1234'/><product id='0xbeef'/></source><seclabel model='dac' relabel='no'/></hostdev>"
           "</devices></domain>")
    root = ET.fromstring(scrub(xml))
    assert root.find(".//seclabel") is None
    assert root.find("devices/hostdev/source/vendor").get("id") == "0x1234"


def test_scrub_keeps_the_hardware():
    root = ET.fromstring(scrub(RICH))
    assert root.get("type") == "kvm"
    assert root.find("os/type").get("machine") == "pc-q35-7.2"
    assert root.find("os/loader").text == "/usr/share/OVMF/OVMF_CODE_4M.fd"
    assert root.find("os/kernel").text == "/var/lib/vmseal/boot/vmlinuz-6.1.0-cloud-amd64"
    assert root.find("os/initrd").text == "/var/lib/vmseal/boot/initrd.img-6.1.0-cloud-amd64"
    assert root.find("os/cmdline").text == "root=/dev/vda console=ttyS0 quiet"
    assert root.find("memory").text == "1048576"
    assert root.find("vcpu").text == "2"
    assert root.find("cpu/model").text == "qemu64"
    disks = root.findall("devices/disk")
    assert [(d.find("target").get("dev"), d.find("target").get("bus")) for d in disks] == [("vda", "virtio"),
                                                                                        ("vdb", "virtio")]
    assert disks[0].find("driver").attrib == {"name": "qemu", "type": "qcow2", "cache": "none", "discard": "unmap"}
    assert disks[0].find("address").get("bus") == "0x04"
    assert [i.find("model").get("type") for i in root.iter("interface")] == ["virtio", "e1000e"]
    assert root.find("devices/interface/source").attrib == {"network": "default", "bridge": "virbr0"}
    assert root.find("{http://libvirt.org/schemas/domain/qemu/1.0}commandline") is not None
    assert disk_targets(scrub(RICH)) == ["vda", "vdb"]


def test_scrub_is_deterministic_and_idempotent():
    hw = scrub(RICH)
    assert scrub(RICH) == hw
    assert scrub(hw) == hw


def test_scrub_refuses_what_is_not_a_domain():
    for bad in ("<network/>", "<domain>", "not xml",
                "<!DOCTYPE d [<!ENTITY x 'y'>]><domain><name>&x;</name></domain>"):
        with pytest.raises(ValueError):  # noqa: PT011 - HardwareError is a ValueError, the contract
            scrub(bad)


def test_build_gives_the_vm_its_own_identity_disks_seed_and_console():
    root = ET.fromstring(_rich_vm(macs=["52:54:00:10:00:01", "52:54:00:10:00:02"]))
    assert [n.text for n in root.findall("name")] == ["web-1"]
    assert [u.text for u in root.findall("uuid")] == [VM_UUID]
    disks = root.findall("devices/disk")
    assert [(d.get("type"), d.get("device"), d.find("target").get("dev"), d.find("source").get("file"),
             d.find("driver").get("type")) for d in disks] == [
        ("file", "disk", "vda", VM_DISKS[0][1], "qcow2"),
        ("file", "disk", "vdb", VM_DISKS[1][1], "qcow2"),  # the source's block disk is now a volume file
        ("file", "cdrom", "sda", SEED, "raw"),  # q35: SATA; sda is free once the source's CD-ROM is gone
    ]
    assert disks[0].find("driver").get("cache") == "none"
    assert disks[1].find("driver").get("io") == "native"
    assert disks[2].find("target").get("bus") == "sata"
    assert disks[2].find("readonly") is not None
    assert [len(d.findall("source")) for d in disks] == [1, 1, 1]
    assert [m.get("address") for m in root.findall("devices/interface/mac")] == ["52:54:00:10:00:01",
                                                                               "52:54:00:10:00:02"]
    serials, consoles = root.findall("devices/serial"), root.findall("devices/console")
    assert len(serials) == 1
    assert serials[0].get("type") == "pty"
    assert serials[0].find("log").attrib == {"file": CONSOLE_LOG, "append": "off"}
    assert len(consoles) == 1
    assert consoles[0].find("target").attrib == {"type": "serial"}
    assert root.find("os/kernel").text.endswith("vmlinuz-6.1.0-cloud-amd64")  # direct kernel boot kept


def test_build_adds_nothing_else():
    hw = scrub(RICH)
    added = _tags(_rich_vm()) - _tags(hw)
    removed = _tags(hw) - _tags(_rich_vm())
    # name, uuid; a source per disk + the seed CD-ROM (disk, driver, source, target, readonly); a MAC per
    # interface; the console log; the source's serial target model is gone with its serial device
    assert added == Counter({"name": 1, "uuid": 1, "source": 3, "mac": 2, "disk": 1, "driver": 1, "readonly": 1,
                             "log": 1})
    assert removed == Counter({"model": 1})


def test_build_default_macs_are_fresh_for_each_vm():
    macs = [[m.get("address") for m in ET.fromstring(_rich_vm()).iter("mac")] for _ in range(3)]
    flat = [m for vm in macs for m in vm]
    assert all(len(vm) == 2 for vm in macs)
    assert len(set(flat)) == len(flat)
    assert all(re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", m) for m in flat)


def test_build_the_test_hosts_source_vm():
    """The domain the test hosts' source VMs are defined with (scripts/guestdisk.py): pc machine, so the
    seed goes on IDE; no console log asked: the serial console is there all the same."""
    src = guestdisk.domain_xml("src-a", ["/var/lib/vmseal/src/a.qcow2", "/var/lib/vmseal/src/b.qcow2"])
    hw = scrub(src)
    assert "src-a" not in hw
    assert "/var/lib/vmseal/src" not in hw
    assert disk_targets(hw) == ["vda", "vdb"]
    root = ET.fromstring(build(hw, name="t-1", uuid=VM_UUID, seed=SEED,
                               disks=[("vdb", "/v/b.qcow2", "qcow2"), ("vda", "/v/a.raw", "raw")]))
    assert [(d.find("target").get("dev"), d.find("source").get("file"), d.find("driver").get("type"))
            for d in root.iter("disk")] == [("vda", "/v/a.raw", "raw"), ("vdb", "/v/b.qcow2", "qcow2"),
                                            ("hda", SEED, "raw")]
    assert root.find("devices/disk[@device='cdrom']/target").get("bus") == "ide"
    assert root.find("devices/serial").attrib == {"type": "pty"}
    assert root.find("devices/serial/log") is None
    assert root.find("devices/console/target").get("type") == "serial"
    assert root.find(".//mac") is None


def test_build_seed_target_is_one_no_disk_uses():
    hw = scrub(RICH.replace("<target dev='vdb' bus='virtio'/>", "<target dev='sda' bus='scsi'/>")
               .replace("bus='0x05' slot", "bus='0x06' slot"))
    root = ET.fromstring(build(hw, name="x", uuid=VM_UUID, seed=SEED,
                               disks=[("vda", "/v/a", "qcow2"), ("sda", "/v/b", "qcow2")]))
    assert root.find("devices/disk[@device='cdrom']/target").attrib == {"dev": "sdb", "bus": "sata"}
    assert build(hw, name="x", uuid=VM_UUID, seed=None, disks=[("vda", "/v/a", "qcow2"), ("sda", "/v/b", "qcow2")]
                 ).count("cdrom") == 0


@pytest.mark.parametrize(("kw", "message"), [
    ({"disks": VM_DISKS[:1]}, "'vdb' has no volume"),
    ({"disks": [*VM_DISKS, ("vdz", "/v/z", "qcow2")]}, "target vdz"),
    ({"disks": [*VM_DISKS, ("vda", "/v/z", "qcow2")]}, "given twice"),
    ({"disks": [VM_DISKS[0], ("vdb", "/v/b", "vmdk")]}, "format"),
    ({"disks": [VM_DISKS[0], ("vdb", "relative/b.qcow2", "qcow2")]}, "absolute"),
    ({"seed": "seed.iso"}, "absolute"),
    ({"console_log": ""}, "console_log"),
    ({"uuid": "not-a-uuid"}, "uuid"),
    ({"name": ""}, "name"),
    ({"macs": ["52:54:00:00:00:01"]}, "1 MAC addresses for 2"),
    ({"macs": ["52:54:00:00:00:01", "52:54:00:00:00:01"]}, "twice"),
    ({"macs": ["52:54:00:00:00:01", "53:54:00:00:00:02"]}, "unicast"),  # multicast bit set
    ({"macs": ["52:54:00:00:00:01", "52:54:00:00:00:0A"]}, "lower case"),
])
def test_build_refuses(kw, message):
    with pytest.raises(HardwareError, match=message):
        _rich_vm(**kw)


def test_build_refuses_a_lun_backed_by_a_file():
    hw = scrub(RICH.replace("<disk type='block' device='disk'>", "<disk type='block' device='lun'>"))
    with pytest.raises(HardwareError, match="lun"):
        build(hw, name="x", uuid=VM_UUID, seed=None, disks=VM_DISKS)


@pytest.mark.security
def test_build_values_cannot_add_markup():
    """Names and paths become text and attribute values through ElementTree: quotes, angle brackets and
    entities in them stay characters; values XML cannot carry (control characters) are refused."""
    name = "x</name><uuid>00000000-0000-0000-0000-000000000000</uuid><name>&amp;'\""
    path = "/v/a.qcow2'/><source file='/etc/shadow'/><x y=\"&lt;"
    xml = _rich_vm(name=name, disks=[("vda", path, "qcow2"), VM_DISKS[1]], seed="/s/<seed>&'\".iso",
                   console_log="/l/'\"><log file='/etc/passwd'/>")
    root = ET.fromstring(xml)
    assert [n.text for n in root.findall("name")] == [name]
    assert [u.text for u in root.findall("uuid")] == [VM_UUID]
    assert [s.get("file") for s in root.iter("source") if s.get("file")] == [path, VM_DISKS[1][1],
                                                                             "/s/<seed>&'\".iso"]
    assert [lg.get("file") for lg in root.iter("log")] == ["/l/'\"><log file='/etc/passwd'/>"]
    for field, bad in [("name", "a\nb"), ("name", "a\x00b"), ("name", "a\x1bb"), ("seed", "/s/\x01.iso"),
                       ("console_log", "/l/\n.log")]:
        with pytest.raises(HardwareError, match=field):
            _rich_vm(**{field: bad})
    with pytest.raises(HardwareError, match="disk vda"):
        _rich_vm(disks=[("vda", "/v/\x0b", "qcow2"), VM_DISKS[1]])


def test_new_mac():
    macs = {new_mac() for _ in range(200)}
    assert len(macs) > 190  # 24 random bits
    for mac in macs:
        assert re.fullmatch(r"52:54:00:[0-9a-f]{2}:[0-9a-f]{2}:[0-9a-f]{2}", mac)


def _validate(tmp_path, xml):
    tool = shutil.which("virt-xml-validate")
    if tool is None or shutil.which("xmllint") is None:
        pytest.skip("virt-xml-validate (libvirt-clients) with xmllint (libxml2-utils) is not installed")
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    r = subprocess.run([tool, str(path), "domain"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("which", ["rich", "rich-no-seed", "testhost", "hostile-values"])
def test_built_domains_validate_against_libvirts_schema(tmp_path, which):
    if which == "rich":
        xml = _rich_vm()
    elif which == "rich-no-seed":
        xml = _rich_vm(seed=None, console_log=None)
    elif which == "testhost":
        hw = scrub(guestdisk.domain_xml("src-a", ["/s/a.qcow2"]))
        xml = build(hw, name="t-1", uuid=VM_UUID, disks=[("vda", "/v/a.qcow2", "qcow2")], seed=SEED,
                    console_log=CONSOLE_LOG)
    else:
        xml = _rich_vm(name="x'\"<&>y", disks=[("vda", "/v/'\"<&>.qcow2", "qcow2"), VM_DISKS[1]])
    _validate(tmp_path, xml)


def test_the_validator_refuses_a_broken_domain(tmp_path):
    """The schema check can fail: a domain without memory and a disk without target are refused."""
    if shutil.which("virt-xml-validate") is None or shutil.which("xmllint") is None:
        pytest.skip("virt-xml-validate (libvirt-clients) with xmllint (libxml2-utils) is not installed")
    path = tmp_path / "bad.xml"
    path.write_text("<domain type='kvm'><name>x</name><devices><disk type='file' device='disk'>"
                    "<source file='/a'/></disk></devices></domain>")
    assert subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True).returncode != 0


def test_libvirt_reads_the_built_domain_back():
    """libvirt's own domain parser (its in-process test driver: no daemon, no host; defining on a real
    host is the vms app's end-to-end test) takes the built XML and reads back what build() put in."""
    import libvirt

    hostile = "x'\"<&>y"
    conn = libvirt.open("test:///default")
    try:
        for name, xml in [("web-1", _rich_vm(macs=["52:54:00:10:00:01", "52:54:00:10:00:02"])),
                          (hostile, _rich_vm(name=hostile, macs=["52:54:00:10:00:01", "52:54:00:10:00:02"]))]:
            dom = conn.defineXML(xml)
            try:
                assert (dom.name(), dom.UUIDString()) == (name, VM_UUID)
                back = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
                assert [(d.find("target").get("dev"), d.find("source").get("file")) for d in back.iter("disk")] == [
                    ("vda", VM_DISKS[0][1]), ("vdb", VM_DISKS[1][1]), ("sda", SEED)]
                assert [m.get("address") for m in back.iter("mac")] == ["52:54:00:10:00:01", "52:54:00:10:00:02"]
                # the serial console's log; libvirt shows serial 0 again under <console>, log and all
                assert [lg.get("file") for lg in back.findall("devices/serial/log")] == [CONSOLE_LOG]
                assert {lg.get("file") for lg in back.iter("log")} == {CONSOLE_LOG}
                assert back.find("os/cmdline").text == "root=/dev/vda console=ttyS0 quiet"
            finally:
                dom.undefine()
    finally:
        conn.close()
