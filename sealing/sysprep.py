"""The virt-sysprep command, as oVirt runs it (vdsm ``virtsysprep.py``) plus what makes it
repeatable: one ``--format`` + ``-a`` per disk (all the guest's disks in one run, or /var on a second
disk is silently skipped), ``--hostname localhost``, a pinned ``--operations`` list so the result
does not drift with the host's guestfs-tools version, and ``--truncate /etc/machine-id`` after the
``customize`` step (which otherwise writes a fresh random machine-id into the template).
"""

from __future__ import annotations

from collections.abc import Sequence

# virt-sysprep 1.48's default-enabled operations (`virt-sysprep --list-operations`, marked '*'),
# pinned. Not included: ca-certificates, firewall-rules, flag-reconfiguration, fs-uuids,
# kerberos-data, user-account (off by default upstream too).
DEFAULT_OPERATIONS = (
    "abrt-data", "backup-files", "bash-history", "blkid-tab", "crash-data", "cron-spool", "customize",
    "dhcp-client-state", "dhcp-server-state", "dovecot-data", "ipa-client", "kerberos-hostkeytab",
    "logfiles", "lvm-uuids", "machine-id", "mail-spool", "net-hostname", "net-hwaddr", "net-nmconn",
    "pacct-log", "package-manager-cache", "pam-data", "passwd-backups", "puppet-data-log",
    "rh-subscription-manager", "rhn-systemid", "rpm-db", "samba-db-log", "script", "smolt-uuid",
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


def build_command(
    disks: Sequence[tuple[str, str]],
    options: dict | None = None,
    *,
    scrub_script: str | None = None,
    verbose: bool = False,
) -> list[str]:
    """argv for one virt-sysprep run over ``disks`` = [(path, format), ...] with validated ``options``
    (sealing.options). ``scrub_script`` is a host path run by the ``script`` operation."""
    if not disks:
        raise ValueError("virt-sysprep needs at least one disk")
    options = options or {}
    ops = operations(options)
    argv = ["virt-sysprep"]
    if verbose:
        argv += ["-v", "-x"]
    for path, fmt in disks:
        argv += ["--format", fmt, "-a", path]
    argv += ["--operations", ",".join(ops)]
    if "customize" in ops:
        argv += ["--hostname", options.get("hostname", "localhost")]
        if options.get("timezone"):
            argv += ["--timezone", options["timezone"]]
        for k in options.get("ssh_keys", []):
            argv += ["--ssh-inject", f"{k['user']}:string:{k['key']}"]
        for cmd in options.get("firstboot_commands", []):
            argv += ["--firstboot-command", cmd]
        if options.get("root_password_hash"):
            h = options["root_password_hash"].replace("\\", "").replace("$", "\\$")
            argv += ["--edit", "/etc/shadow:s{^root:[^:]*:}{root:" + h + ":}"]
        argv += ["--truncate", "/etc/machine-id"]
        for path in DELETE_AFTER_CUSTOMIZE:
            argv += ["--delete", path]
    if options.get("remove_user_accounts"):
        argv += ["--remove-user-accounts", ",".join(options["remove_user_accounts"])]
    if options.get("keep_user_accounts"):
        argv += ["--keep-user-accounts", ",".join(options["keep_user_accounts"])]
    if scrub_script and "script" in ops:
        argv += ["--script", scrub_script]
    return argv


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


def error_summary(log: str) -> str:
    """The line of a virt-sysprep log that says why it failed."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip() and not ln.startswith("{")]
    for ln in reversed(lines):
        if "error:" in ln:
            return ln[ln.index("virt-sysprep") if "virt-sysprep" in ln else 0:][:500]
    return lines[-1][:500] if lines else "no output"
