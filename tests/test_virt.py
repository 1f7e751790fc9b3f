"""hostjobs.virt's pure logic: a VM's disks read from its domain XML, and those that cannot be copied
whole."""

from hostjobs.virt import parse_disks


def test_parse_disks_skips_cdroms_and_sourceless_disks():
    xml = """<domain><devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/a.qcow2'/>
        <target dev='vda'/></disk>
      <disk type='file' device='cdrom'><source file='/x.iso'/><target dev='sda'/></disk>
      <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg/b'/>
        <target dev='vdb'/></disk>
      <disk type='file' device='disk'><target dev='vdc'/></disk>
    </devices></domain>"""
    assert [(d.target, d.path, d.format) for d in parse_disks(xml)] == [("vda", "/a.qcow2", "qcow2"),
                                                                       ("vdb", "/dev/vg/b", "raw")]


def test_disks_that_cannot_be_copied_whole_are_named_from_the_domain_xml():
    """Every kind of disk is listed (none dropped), and what cannot be copied whole is named: a block,
    network or pool volume disk, a format create-volume cannot read, a declared backing store that is
    not one of the VM's own files. A backing store among its own disks, and read-only disks, are fine."""
    from hostjobs.virt import declared_problems

    def disk(dev, body, kind="file", fmt="qcow2", extra=""):
        return (f"<disk type='{kind}' device='disk'><driver name='qemu' type='{fmt}'/>{body}"
                f"<target dev='{dev}'/>{extra}</disk>")

    store = "<backingStore type='{}' index='1'><format type='qcow2'/><source {}/><backingStore/></backingStore>"
    xml = "<domain><devices>" + "".join([
        disk("vda", "<source file='/i/a.qcow2'/>", extra=store.format("file", "file='/i/own.qcow2'")),
        disk("vdb", "<source file='/i/own.qcow2'/>"),
        disk("vdc", "<source file='/i/c.qcow2'/>", extra=store.format("file", "file='/shared/base.qcow2'")),
        disk("vdd", "<source file='/i/d.qcow2'/>",
             extra="<backingStore type='network' index='1'><format type='raw'/><source protocol='nbd' name='x'>"
                   "<host name='10.211.0.1'/></source><backingStore/></backingStore>"),
        disk("vde", "<source dev='/dev/vg/e'/>", kind="block", fmt="raw"),
        disk("vdf", "<source protocol='rbd' name='pool/img'><host name='10.211.0.2' port='6789'/></source>",
             kind="network", fmt="raw"),
        disk("vdg", "<source pool='default' volume='g.qcow2'/>", kind="volume"),
        disk("vdh", "<source file='/i/h.vmdk'/>", fmt="vmdk"),
        disk("vdi", "<source file='i.qcow2'/>"),
        disk("vdj", "<source dev='/dev/sr0'/>", kind="block", fmt="raw", extra="<readonly/>"),
    ]) + "</devices></domain>"
    disks = parse_disks(xml)
    assert [d.target for d in disks] == ["vda", "vdb", "vdc", "vdd", "vde", "vdf", "vdg", "vdh", "vdi", "vdj"]
    assert disks[5].path == "rbd://10.211.0.2:6789/pool/img"
    problems = declared_problems(disks)
    named = [p.split(" ", 2)[1] for p in problems]
    assert named == ["vdc", "vdd", "vde", "vdf", "vdg", "vdh", "vdi"], problems
    assert "(file /shared/base.qcow2)" in problems[0]
    assert "network" in problems[1]
    assert "block device" in problems[2]
    assert "network disk" in problems[3]
    assert "storage pool volume" in problems[4]
    assert "vmdk" in problems[5]
    assert "absolute" in problems[6]
