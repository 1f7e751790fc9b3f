"""sealing.sysprep: the virt-sysprep command a seal runs, its environment, and what is read from its log
(progress, errors, the guest, the audit, refusals)."""

import pytest

from sealing import sysprep


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


def test_the_first_boot_agent_and_its_installer_go_together():
    with pytest.raises(ValueError, match="go together"):
        sysprep.build_command([("/p/a.qcow2", "qcow2")], {}, firstboot_script="/lib/guest_firstboot.sh")
    argv = sysprep.build_command([("/p/a.qcow2", "qcow2")], {}).argv
    assert "--upload" not in argv


def test_seal_options_become_single_argv_elements():
    opts = {"hostname": "web-01", "timezone": "Europe/Berlin",
            "ssh_keys": [{"user": "alice", "key": "ssh-ed25519 K c"}],
            "firstboot_commands": ["echo 'a b' ; rm -rf / $(x)"], "root_password_hash": "$6$salt$hash/x.",
            "operations_add": ["user-account"], "operations_remove": ["logfiles"], "remove_user_accounts": ["bob"]}
    cmd = sysprep.build_command([("/p/a.qcow2", "qcow2")], opts, prepare_script="/lib/guest_prepare.sh",
                                audit_script="/lib/guest_audit.sh", firstboot_script="/lib/guest_firstboot.sh",
                                firstboot_agent="/lib/vmseal_firstboot.sh", report_disk="report.img")
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
    assert [argv[i + 1] for i in runs] == ["/lib/guest_prepare.sh", "/lib/guest_firstboot.sh", "/lib/guest_audit.sh"]
    assert runs[0] < min(i for i, a in enumerate(argv) if a in ("--hostname", "--truncate", "--commands-from-file"))
    # the first-boot agent: uploaded into the guest's /tmp, then installed there by its script, before the audit
    assert argv[runs[1] - 2:runs[1]] == ["--upload", "/lib/vmseal_firstboot.sh:/tmp/vmseal-firstboot"]
    i = runs[2]
    assert argv[i - 2:i + 2] == ["--write", "/tmp/vmseal-audit-hostname:web-01", "--run", "/lib/guest_audit.sh"]
    assert argv[i + 1:].count("--delete") == 2
    assert i > max(i for i, a in enumerate(argv) if a in ("--truncate", "--commands-from-file", "--hostname"))


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
