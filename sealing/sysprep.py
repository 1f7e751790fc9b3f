"""The virt-sysprep command, as oVirt runs it (vdsm ``virtsysprep.py``) plus what makes it
repeatable: one ``--format`` + ``-a`` per disk (all the guest's disks in one run, or /var on a second
disk is silently skipped), ``--hostname localhost``, a pinned ``--operations`` list so the result
does not drift with the host's guestfs-tools version, and ``--truncate /etc/machine-id`` after the
``customize`` step (which otherwise writes a fresh random machine-id into the template).

**Guest content is hostile.** Nothing of vmseal runs over a guest's files on the host: virt-sysprep's
``script`` operation (which runs a host program on the guest FUSE-mounted on the host, where the
guest's absolute symlinks point into the host) is never used and cannot be added. Everything that
touches the guest runs inside the libguestfs appliance, in the guest's own root:

- the first ``customize`` action, ``--run hooks/guest_prepare.sh``, refuses non-Linux guests and
  scrubs MAC pinning;
- then ``--upload hooks/vmseal_firstboot.sh`` to the guest's /tmp and ``--run hooks/guest_firstboot.sh``
  install vmseal's first-boot agent on systemd guests (``/usr/local/lib/vmseal/firstboot`` and the
  enabled ``vmseal-firstboot.service``, before ssh and the network): the seal removes the SSH host
  keys, and Debian's ssh.service does not make new ones (its ``sshd -t`` fails), so the agent makes them
  (``ssh-keygen -A``) when none is there; in guests without cloud-init it also applies the hostname,
  root's authorized_keys and password hash of a ``cidata`` seed's ``vmseal/`` files, once per instance;
- the last ``customize`` action, ``--run hooks/guest_audit.sh`` (after every identity operation but
  lvm-uuids), reports what the guest is and checks every item in AUDIT_ITEMS, failing the run if one
  is left. It writes the same lines to the **report disk**: a 1 MiB raw file the host's helper makes
  in the job's directory (``run --report-disk``), added to the appliance as the last disk, which the
  helper reads back after the run. Those lines are the guest's own word, recorded, never trusted.

So a seal costs one appliance launch (12-60 s each without KVM), and ``customize`` cannot be removed
from the operations (sealing.options refuses it).

The root password hash never appears in an argv: its ``edit /etc/shadow`` goes to a commands file
(``--commands-from-file``) that the job's spec carries to the host on stdin and the helper writes 0600
in the job's directory (virt-customize hands the Perl expression to perl in its environment).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

# virt-sysprep 1.48's default-enabled operations (`virt-sysprep --list-operations`, marked '*'),
# pinned, but for ``script`` (see FORBIDDEN_OPERATIONS). Not included: ca-certificates, firewall-rules,
# flag-reconfiguration, fs-uuids, kerberos-data, user-account (off by default upstream too).
DEFAULT_OPERATIONS = (
    "abrt-data", "backup-files", "bash-history", "blkid-tab", "crash-data", "cron-spool", "customize",
    "dhcp-client-state", "dhcp-server-state", "dovecot-data", "ipa-client", "kerberos-hostkeytab",
    "logfiles", "lvm-uuids", "machine-id", "mail-spool", "net-hostname", "net-hwaddr", "net-nmconn",
    "pacct-log", "package-manager-cache", "pam-data", "passwd-backups", "puppet-data-log",
    "rh-subscription-manager", "rhn-systemid", "rpm-db", "samba-db-log", "smolt-uuid",
    "ssh-hostkeys", "ssh-userdir", "sssd-db-log", "tmp-files", "udev-persistent-net", "utmp", "yum-uuid",
)


# Identity that virt-sysprep 1.48 leaves or re-creates: customize writes a fresh random seed, and
# nothing removes LVM's devices file (copied templates then fail to boot on other disks).
DELETE_AFTER_CUSTOMIZE = ("/var/lib/systemd/random-seed", "/var/lib/random-seed", "/etc/lvm/devices/system.devices")


def operations(options: dict | None = None) -> list[str]:
    options = options or {}
    ops = [*DEFAULT_OPERATIONS, *options.get("operations_add", [])]
    if options.get("remove_user_accounts") or options.get("keep_user_accounts"):
        ops.append("user-account")
    removed = set(options.get("operations_remove", []))
    return sorted({op for op in ops if op not in removed})


# What guest_audit.sh checks, by the names it reports (a unit test keeps the two in step).
AUDIT_ITEMS = (
    "machine-id /etc/machine-id", "machine-id /var/lib/dbus/machine-id", "ssh host keys", "persistent net rules",
    "MAC pinning in network configs", "hostname", "DHCP leases", "log files empty", "shell histories",
    "random seed", "LVM system.devices", "sshd can start at first boot",
)
REQUIRED_OPERATIONS = ("customize",)  # vmseal's guard and audit run there
# ``script`` runs a host program with the guest FUSE-mounted on the host: a guest's absolute symlinks
# would resolve to the host's own files.
FORBIDDEN_OPERATIONS = ("script",)
AUDIT_HOSTNAME_FILE = "/tmp/vmseal-audit-hostname"
FIRSTBOOT_UPLOAD = "/tmp/vmseal-firstboot"  # where the agent is uploaded in the guest; guest_firstboot.sh installs it
CUSTOMIZE_LOG = "/tmp/builder.log"  # where virt-customize's --run writes its output, in the guest
REPORT_DISK = "report.img"  # made by the helper in the job's directory (the command's working directory)
COMMANDS_FILE = "customize.cmds"  # likewise, from the job's spec: customize commands that carry secrets


@dataclass(frozen=True)
class SealCommand:
    """What a seal runs on the host: ``argv``, and ``files`` ({name: text}) the host job writes 0600 in
    its directory before it starts (what must not be in an argv)."""

    argv: list[str]
    files: dict[str, str] = field(default_factory=dict)


def build_command(
    disks: Sequence[tuple[str, str]],
    options: dict | None = None,
    *,
    prepare_script: str | None = None,
    audit_script: str | None = None,
    firstboot_script: str | None = None,
    firstboot_agent: str | None = None,
    report_disk: str | None = None,
) -> SealCommand:
    """One virt-sysprep run over ``disks`` = [(path, format), ...] with validated ``options``
    (sealing.options). ``prepare_script`` and ``audit_script`` are host paths of vmseal's scripts, run
    in the guest (inside the appliance) as the first and the last customize action;
    ``firstboot_agent`` and ``firstboot_script`` the host paths of the first-boot agent and of its
    installer (run in the guest before the audit); ``report_disk`` the raw disk the audit writes its
    report to (added last)."""
    if bool(firstboot_script) != bool(firstboot_agent):
        raise ValueError("the first-boot agent and its installer go together")
    if not disks:
        raise ValueError("virt-sysprep needs at least one disk")
    options = options or {}
    ops = operations(options)
    argv = ["virt-sysprep"]
    files = {}
    for path, fmt in disks:
        argv += ["--format", fmt, "-a", path]
    if report_disk:
        argv += ["--format", "raw", "-a", report_disk]
    argv += ["--operations", ",".join(ops)]
    if "customize" in ops:
        if prepare_script:
            argv += ["--run", prepare_script]
        argv += ["--hostname", options.get("hostname", "localhost")]
        if options.get("timezone"):
            argv += ["--timezone", options["timezone"]]
        for k in options.get("ssh_keys", []):
            argv += ["--ssh-inject", f"{k['user']}:string:{k['key']}"]
        for cmd in options.get("firstboot_commands", []):
            argv += ["--firstboot-command", cmd]
        if options.get("root_password_hash"):
            h = options["root_password_hash"].replace("\\", "").replace("$", "\\$")
            files[COMMANDS_FILE] = "edit /etc/shadow:s{^root:[^:]*:}{root:" + h + ":}\n"
            argv += ["--commands-from-file", COMMANDS_FILE]
        if firstboot_script:
            argv += ["--upload", f"{firstboot_agent}:{FIRSTBOOT_UPLOAD}", "--run", firstboot_script]
        argv += ["--truncate", "/etc/machine-id"]
        for path in DELETE_AFTER_CUSTOMIZE:
            argv += ["--delete", path]
        if audit_script:
            argv += ["--write", f"{AUDIT_HOSTNAME_FILE}:{options.get('hostname', 'localhost')}",
                     "--run", audit_script, "--delete", AUDIT_HOSTNAME_FILE, "--delete", CUSTOMIZE_LOG]
    if options.get("remove_user_accounts"):
        argv += ["--remove-user-accounts", ",".join(options["remove_user_accounts"])]
    if options.get("keep_user_accounts"):
        argv += ["--keep-user-accounts", ",".join(options["keep_user_accounts"])]
    return SealCommand(argv, files)


def environment(backend_settings: str = "") -> dict[str, str]:
    env = {"LIBGUESTFS_BACKEND": "direct"}
    if backend_settings:
        env["LIBGUESTFS_BACKEND_SETTINGS"] = backend_settings
    return env


def progress_of(line: str, operations: Sequence[str] = DEFAULT_OPERATIONS) -> int | None:
    """Map a virt-sysprep progress line to 0..95, or None."""
    line = line.strip()
    if "Examining the guest" in line:
        return 5
    if 'Performing "' in line:
        op = line.split('Performing "', 1)[1].split('"', 1)[0]
        if op in operations:
            return 10 + int(85 * (list(operations).index(op) + 1) / len(operations))
    return None


AUDIT_LINE = re.compile(r"^vmseal-audit (ok|FAIL) (.+?):(?: (.*))?$")


def guest_of(log: str) -> str:
    """What the guard script reported about the guest ("Debian GNU/Linux 12 (bookworm) (debian 12)")."""
    for line in log.splitlines():
        if line.startswith("vmseal-guest "):
            try:
                g = json.loads(line.split(" ", 1)[1])
            except ValueError:
                continue
            name = g.get("pretty_name") or g.get("id") or "Linux"
            return f"{name} ({g.get('id', '?')} {g.get('version_id', '?')})"[:255]
    return ""


def audit_of(log: str, passed: bool) -> dict:
    """The audit report: the FAIL/ok lines the audit printed (from the report disk, which the helper
    prints after the run; virt-sysprep also shows them when it fails), or, when virt-sysprep succeeded
    and no line came back, every item of AUDIT_ITEMS passed (the run succeeds only then)."""
    items, seen = [], set()
    for line in log.splitlines():
        m = AUDIT_LINE.match(line.strip())
        if m and m.group(2) not in seen:  # each item once (the same lines may come twice: log and report)
            seen.add(m.group(2))
            items.append({"item": m.group(2), "ok": m.group(1) == "ok", "detail": (m.group(3) or "").strip()})
    if not items and passed:
        items = [{"item": name, "ok": True, "detail": ""} for name in AUDIT_ITEMS]
    if not items:
        return {}
    return {"passed": all(i["ok"] for i in items), "items": items, "in_session": True}


REFUSALS = (  # virt-sysprep's own refusals of guests it cannot seal, in vmseal's words
    ("no operating systems were found", "no operating system was recognised on the VM's disks"),
    ("multi-boot operating systems are not supported", "several operating systems found on the VM's disks"),
    ("multiboot operating systems are not supported", "several operating systems found on the VM's disks"),
    ("Enter key or passphrase", "the VM's disks are encrypted: vmseal cannot seal encrypted guests"),
    ("architecture are not compatible", "the guest's architecture differs from the host's: "
                                        "vmseal's audit cannot run in it"),
)


def refusal_of(log: str) -> str | None:
    """Why the guest itself was refused (not Linux, no OS, several, encrypted), or None."""
    for line in log.splitlines():
        if line.startswith("vmseal-refused: "):
            return line.split(": ", 1)[1].strip()
    for needle, message in REFUSALS:
        if needle in log:
            return message + ": only one unencrypted Linux guest can be sealed"
    return None


def error_summary(log: str) -> str:
    """The line of a virt-sysprep log that says why it failed."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip() and not ln.startswith("{")]
    for ln in reversed(lines):
        if "error:" in ln:
            return ln[ln.index("virt-sysprep") if "virt-sysprep" in ln else 0:][:500]
    return lines[-1][:500] if lines else "no output"
