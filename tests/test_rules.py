"""Pure logic: volume rules, the host seal slot, the virt-sysprep command, phases, parsing. (Job
transitions: test_hostjob_transitions.py; the flow's lease: test_lease.py.)"""

import os
import shutil

import pytest

from hostjobs.transport import parse_host_key
from hostjobs.virt import parse_disks
from sealing import sysprep
from volumes import rules

META = {"id": "v", "type": "LEAF", "legality": "LEGAL", "generation": 7, "parent": None}


def test_update_bumps_generation_and_changes_only_what_was_asked():
    new = rules.plan_update(META, generation=7, legality="ILLEGAL")
    assert new == {**META, "legality": "ILLEGAL", "generation": 8}
    assert META["legality"] == "LEGAL", "the input is not modified"


def test_legal_and_shared_in_one_update_bumps_once():
    ill = {**META, "legality": "ILLEGAL"}
    assert rules.plan_update(ill, generation=7, legality="LEGAL", type="SHARED")["generation"] == 8


def test_generation_wraps_at_999():
    assert rules.plan_update({**META, "generation": 999}, generation=999, legality="ILLEGAL")["generation"] == 0


@pytest.mark.parametrize(
    ("meta", "kwargs", "error"),
    [
        (META, {"generation": 6, "legality": "ILLEGAL"}, rules.StaleGeneration),
        (META, {"generation": 7, "legality": "LEGAL"}, rules.NoChange),
        (META, {"generation": 7}, rules.NoChange),
        (META, {"generation": 7, "type": "LEAF"}, rules.NoChange),
        (META, {"generation": 7, "type": "INTERNAL"}, rules.IllegalChange),
        ({**META, "parent": "p"}, {"generation": 7, "type": "SHARED"}, rules.IllegalChange),
        ({**META, "type": "SHARED"}, {"generation": 7, "legality": "ILLEGAL"}, rules.ReadOnlyVolume),
        ({**META, "type": "SHARED"}, {"generation": 7, "type": "LEAF"}, rules.ReadOnlyVolume),
        (META, {"generation": 7, "legality": "BROKEN"}, rules.IllegalChange),
    ],
)
def test_update_refusals(meta, kwargs, error):
    with pytest.raises(error):
        rules.plan_update(meta, **kwargs)


def test_shared_volume_is_not_writable():
    with pytest.raises(rules.ReadOnlyVolume):
        rules.check_writable({**META, "type": "SHARED"})
    rules.check_writable(META)  # a LEAF is


def test_sysprep_command_passes_every_disk_with_format_and_pinned_operations():
    cmd = sysprep.build_command([("/p/a.qcow2", "qcow2"), ("/p/b.qcow2", "qcow2")])
    argv = cmd.argv
    assert cmd.files == {}
    assert argv[:9] == ["virt-sysprep", "--format", "qcow2", "-a", "/p/a.qcow2", "--format", "qcow2", "-a",
                        "/p/b.qcow2"]
    ops = argv[argv.index("--operations") + 1].split(",")
    assert ops == sorted(sysprep.DEFAULT_OPERATIONS)
    assert argv[argv.index("--hostname") + 1] == "localhost"
    assert argv[argv.index("--truncate") + 1] == "/etc/machine-id"
    deleted = [argv[i + 1] for i, a in enumerate(argv) if a == "--delete"]
    assert deleted == list(sysprep.DELETE_AFTER_CUSTOMIZE)
    assert "--script" not in argv
    assert "script" not in ops, "the script operation runs a host program over the guest's files"
    with pytest.raises(ValueError, match="at least one disk"):
        sysprep.build_command([])


def test_sysprep_environment_is_per_host():
    assert sysprep.environment("") == {"LIBGUESTFS_BACKEND": "direct"}
    assert sysprep.environment("force_tcg")["LIBGUESTFS_BACKEND_SETTINGS"] == "force_tcg"


def test_sysprep_progress_and_error_summary():
    assert sysprep.progress_of("[   0.0] Examining the guest ...") == 5
    assert sysprep.progress_of('[  45.0] Performing "yum-uuid" ...') == 95
    assert sysprep.progress_of("random noise") is None
    log = "[ 0.0] Examining the guest ...\nvirt-sysprep: error: no operating systems were found in the guest image\n"
    assert sysprep.error_summary(log) == "virt-sysprep: error: no operating systems were found in the guest image"


def test_phases_with_and_without_seal():
    from sealing.flow import next_phase

    def walk(seal):
        p, seen = "CREATE_TEMPLATE", []
        while p != "DONE":
            seen.append(p)
            p = next_phase(p, seal)
        return seen

    assert walk(True) == ["CREATE_TEMPLATE", "COPY_DISKS", "ASSIGN_ILLEGAL", "SEAL", "ASSIGN_LEGAL_SHARED"]
    assert walk(False) == ["CREATE_TEMPLATE", "COPY_DISKS", "ASSIGN_LEGAL_SHARED"]


def test_host_key_parsing():
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK root@h"
    assert parse_host_key(key)[0] == "ssh-ed25519"
    for bad, why in (("", "expected"), ("ssh-dss AAAA", "unsupported"), ("ssh-ed25519 ***", "base64"),
                     ("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK", "match")):
        with pytest.raises(ValueError, match=why):
            parse_host_key(bad)


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


@pytest.mark.django_db
def test_a_host_slot_is_reserved_only_below_the_limit_and_freed_by_the_job_ending(settings):
    from hostjobs import runner
    from hostjobs.models import Host, HostJob, JobAction

    settings.VMSEAL_MAX_PARALLEL_SEALS = 1
    host = Host.objects.create(name="h", address="10.211.0.99", host_key="ssh-ed25519 AAAA")
    assert host.seal_limit == 1
    ops = [HostJob.create(host, JobAction.CREATE_TEMPLATE) for _ in range(2)]

    def reserve(op, **kw):
        return runner.reserve(host, JobAction.SEAL, limit=host.seal_limit, parent=op, step="SEAL", target=f"t:{op.pk}",
                              description="seal", timeout=60, interval=0.01, **kw)

    first = reserve(ops[0])
    assert first.status == "pending"
    assert reserve(ops[0]) == first, "a resumed flow gets its own reservation back"
    waits, asked = [], []
    with pytest.raises(runner.JobAborted):
        reserve(ops[1], on_wait=waits.append, should_abort=lambda: asked.append(1) or len(asked) > 3)
    assert waits == [1], "told once that the one slot is busy"
    assert HostJob.objects.filter(action=JobAction.SEAL).count() == 1, "nothing reserved beyond the limit"
    first.start()
    first.end("done")
    second = reserve(ops[1])
    assert second.parent_id == ops[1].pk
    host.max_parallel_seals = 3
    assert host.seal_limit == 3, "the host's own limit wins over the setting"


def test_seal_options_become_single_argv_elements():
    opts = {"hostname": "web-01", "timezone": "Europe/Berlin",
            "ssh_keys": [{"user": "alice", "key": "ssh-ed25519 K c"}],
            "firstboot_commands": ["echo 'a b' ; rm -rf / $(x)"], "root_password_hash": "$6$salt$hash/x.",
            "operations_add": ["user-account"], "operations_remove": ["logfiles"], "remove_user_accounts": ["bob"]}
    cmd = sysprep.build_command([("/p/a.qcow2", "qcow2")], opts, prepare_script="/lib/guest_prepare.sh",
                                audit_script="/lib/guest_audit.sh", report_disk="report.img")
    argv = cmd.argv
    ops = argv[argv.index("--operations") + 1].split(",")
    assert "logfiles" not in ops
    assert "user-account" in ops
    assert argv[argv.index("--hostname") + 1] == "web-01"
    assert argv[argv.index("--timezone") + 1] == "Europe/Berlin"
    assert argv[argv.index("--ssh-inject") + 1] == "alice:string:ssh-ed25519 K c"
    assert argv[argv.index("--firstboot-command") + 1] == "echo 'a b' ; rm -rf / $(x)", "passed as is, one element"
    assert argv[argv.index("--remove-user-accounts") + 1] == "bob"
    # the password hash is in no argv element: it goes to a commands file the host job writes 0600
    assert not any("salt" in a for a in argv)
    assert "--edit" not in argv
    assert "--script" not in argv
    assert argv[argv.index("--commands-from-file") + 1] == sysprep.COMMANDS_FILE
    assert cmd.files == {sysprep.COMMANDS_FILE: "edit /etc/shadow:s{^root:[^:]*:}{root:\\$6\\$salt\\$hash/x.:}\n"}
    # the report disk is the last disk, raw
    i = argv.index("--operations")
    assert argv[i - 4:i] == ["--format", "raw", "-a", "report.img"]
    # the guard first, the audit the last customize action but the clean-up of its own traces
    runs = [i for i, a in enumerate(argv) if a == "--run"]
    assert [argv[i + 1] for i in runs] == ["/lib/guest_prepare.sh", "/lib/guest_audit.sh"]
    assert runs[0] < min(i for i, a in enumerate(argv) if a in ("--hostname", "--truncate", "--commands-from-file"))
    i = runs[1]
    assert argv[i - 2:i + 2] == ["--write", "/tmp/vmseal-audit-hostname:web-01", "--run", "/lib/guest_audit.sh"]
    assert argv[i + 1:].count("--delete") == 2
    assert i > max(i for i, a in enumerate(argv) if a in ("--truncate", "--commands-from-file", "--hostname"))


def _opts(data):
    from sealing.options import SealOptionsSerializer

    ser = SealOptionsSerializer(data=data)
    return ser, ser.is_valid()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"hostname": "bad host;rm"}, "hostname"),
        ({"hostname": "-x"}, "hostname"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"root_password": "short"}, "root_password"),
        ({"root_password": "line\nbreak-long"}, "root_password"),
        ({"ssh_keys": [{"user": "Root;", "key": "ssh-ed25519 AAAA"}]}, "ssh_keys"),
        ({"ssh_keys": [{"user": "alice", "key": "not a key"}]}, "ssh_keys"),
        ({"firstboot_commands": ["a\nb"]}, "firstboot_commands"),
        ({"operations_add": ["$(reboot)"]}, "operations_add"),
        ({"operations_add": ["logfiles"], "operations_remove": ["logfiles"]}, "operations_remove"),
        ({"remove_user_accounts": ["a"], "keep_user_accounts": ["b"]}, "keep_user_accounts"),
        ({"operations_remove": ["customize"]}, "operations_remove"),
        ({"operations_add": ["script"]}, "operations_add"),
        ({"remove_user_accounts": ["../x"]}, "remove_user_accounts"),
    ],
)
def test_invalid_seal_options_name_the_field(data, field):
    ser, ok = _opts(data)
    assert not ok
    assert field in ser.errors


def test_the_root_password_is_stored_only_as_a_hash():
    ser, ok = _opts({"root_password": "Sup3r-secret-pw!", "hostname": "Web-01"})
    assert ok, ser.errors
    stored = ser.to_stored()
    assert "root_password" not in stored
    assert stored["root_password_hash"].startswith("$6$")
    assert "Sup3r-secret-pw!" not in str(stored)
    assert stored["hostname"] == "web-01"
    from sealing.options import public

    assert public(stored) == {"hostname": "web-01", "root_password": "(set)"}


def test_operation_names_are_checked_against_the_hosts_list():
    from rest_framework.exceptions import ValidationError

    from sealing.options import check_operations

    check_operations({"operations_add": ["user-account"]}, {"user-account": False, "logfiles": True})
    with pytest.raises(ValidationError, match="no operation 'nope'"):
        check_operations({"operations_remove": ["nope"]}, {"logfiles": True})


SEAL_LOG_HEAD = """$ virt-sysprep --format qcow2 -a /p/a.qcow2
[   0.0] Examining the guest ...
[  45.1] Performing "customize" ...
[  45.2] Running: /var/lib/vmseal/lib/x/guest_prepare.sh
[  64.8] Running: /var/lib/vmseal/lib/x/guest_audit.sh
"""
SEAL_OK_LOG = SEAL_LOG_HEAD + """vmseal: the guest's report:
vmseal-guest {"id": "debian", "version_id": "12", "pretty_name": "Debian GNU/Linux 12 (bookworm)"}
""" + "".join(f"vmseal-audit ok {item}: \n" for item in sysprep.AUDIT_ITEMS)


def test_the_guest_and_a_passed_audit_are_read_from_the_seal_log():
    assert sysprep.guest_of(SEAL_OK_LOG) == "Debian GNU/Linux 12 (bookworm) (debian 12)"
    audit = sysprep.audit_of(SEAL_OK_LOG, passed=True)
    assert audit["passed"] is True
    assert [i["item"] for i in audit["items"]] == list(sysprep.AUDIT_ITEMS)
    assert sysprep.refusal_of(SEAL_OK_LOG) is None


def test_a_failed_audit_keeps_each_items_detail():
    log = SEAL_LOG_HEAD + ("vmseal-audit ok ssh host keys: \n"
                         "vmseal-audit FAIL MAC pinning in network configs: /etc/network/interfaces\n"
                         "virt-sysprep: error: /x/guest_audit.sh: command exited with an error\n")
    audit = sysprep.audit_of(log, passed=False)
    assert audit["passed"] is False
    assert audit["items"] == [{"item": "ssh host keys", "ok": True, "detail": ""},
                              {"item": "MAC pinning in network configs", "ok": False,
                               "detail": "/etc/network/interfaces"}]
    assert sysprep.audit_of("virt-sysprep: error: disk locked\n", passed=False) == {}


@pytest.mark.parametrize(
    ("log", "message"),
    [
        ("vmseal-refused: the guest is Windows: virt-sysprep seals Linux guests only\nvirt-sysprep: error: ...",
         "the guest is Windows"),
        ("virt-sysprep: error: no operating systems were found in the guest image",
         "no operating system was recognised"),
        ("virt-sysprep: error: multi-boot operating systems are not supported", "several operating systems"),
        ('Enter key or passphrase ("/dev/sda2"): virt-sysprep: error: ...', "encrypted"),
    ],
)
def test_guest_refusals_are_told_in_vmseals_words(log, message):
    assert message in sysprep.refusal_of(log)


def _run_script(script, guest, *argv, chroot=False):
    import subprocess
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "hooks" / script
    if chroot:
        (guest / "tmp").mkdir(exist_ok=True)
        shutil.copy(path, guest / "tmp" / script)
        return subprocess.run(["chroot", str(guest), "/bin/sh", f"/tmp/{script}"], capture_output=True, text=True)
    return subprocess.run(["sh", str(path), *argv], cwd=guest, capture_output=True, text=True)


@pytest.fixture
def guest_tree(tmp_path):
    """A guest's files as guestdisk.py plants them (every identity item present), as a directory."""
    from tests.fixtures.testhosts import guestdisk

    root = tmp_path / "guest"
    guestdisk._write_root(root, {**guestdisk.BASE_FILES, **guestdisk.IDENTITY, "/etc/fstab": ""})
    return root


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_the_guard_script_accepts_linux_and_scrubs_mac_pinning(guest_tree):
    p = _run_script("guest_prepare.sh", guest_tree, chroot=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "hwaddress" not in (guest_tree / "etc/network/interfaces").read_text()
    nm = (guest_tree / "etc/NetworkManager/system-connections/eth0.nmconnection").read_text()
    assert "mac-address" not in nm
    assert "[connection]" in nm


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_the_guard_script_refuses_windows_and_unknown_systems(tmp_path):
    from tests.fixtures.testhosts import guestdisk

    for name, dirs in (("win", ["Windows/System32"]), ("other", ["etc"])):
        root = tmp_path / name
        for d in dirs:
            (root / d).mkdir(parents=True)
        (root / "bin").mkdir()
        shutil.copy(guestdisk.BUSYBOX, root / "bin" / "sh")  # chroot runs the guest's own /bin/sh
        p = _run_script("guest_prepare.sh", root, chroot=True)
        assert p.returncode == 1, name
        why = sysprep.refusal_of(p.stdout)
        assert why.startswith("the guest is Windows" if name == "win" else "no Linux system found"), (name, why)


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_the_audit_script_fails_every_planted_item_and_passes_a_clean_guest(guest_tree):
    p = _run_script("guest_audit.sh", guest_tree, chroot=True)
    assert p.returncode == 1, p.stdout + p.stderr
    audit = sysprep.audit_of(p.stdout, passed=False)
    assert [i["item"] for i in audit["items"]] == list(sysprep.AUDIT_ITEMS), "the script and AUDIT_ITEMS agree"
    assert sysprep.guest_of(p.stdout) == "Debian GNU/Linux 12 (bookworm) (debian 12)", "it reports the guest"
    failed = {i["item"] for i in audit["items"] if not i["ok"]}
    assert failed == set(sysprep.AUDIT_ITEMS), audit  # every item was planted
    # what a seal leaves: identity removed, machine-id emptied, the host name set
    for rel in ("etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub", "etc/ssh/ssh_host_rsa_key",
                "etc/ssh/ssh_host_rsa_key.pub", "etc/udev/rules.d/70-persistent-net.rules", "root/.bash_history",
                "home/alice/.bash_history", "var/lib/dhcp/dhclient.eth0.leases", "var/lib/systemd/random-seed",
                "etc/lvm/devices/system.devices", "etc/NetworkManager/system-connections/eth0.nmconnection",
                "etc/network/interfaces"):
        (guest_tree / rel).unlink()
    for rel in ("etc/machine-id", "var/lib/dbus/machine-id", "var/log/syslog", "var/log/auth.log",
                "var/log/messages", "var/log/wtmp", "var/log/lastlog"):
        (guest_tree / rel).write_text("")
    (guest_tree / "etc/hostname").write_text("web-01\n")
    (guest_tree / "tmp/vmseal-audit-hostname").write_text("web-01")
    p = _run_script("guest_audit.sh", guest_tree, chroot=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert sysprep.audit_of(p.stdout, passed=True)["passed"] is True
    (guest_tree / "tmp/vmseal-audit-hostname").write_text("other")
    p = _run_script("guest_audit.sh", guest_tree, chroot=True)
    assert p.returncode == 1
    assert "vmseal-audit FAIL hostname: /etc/hostname is 'web-01', expected 'other'" in p.stdout
