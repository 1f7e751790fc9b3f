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


def build_command(
    disks: Sequence[tuple[str, str]],
    *,
    hostname: str = "localhost",
    operations: Sequence[str] = DEFAULT_OPERATIONS,
    verbose: bool = False,
) -> list[str]:
    """argv for one virt-sysprep run over ``disks`` = [(path, format), ...]."""
    if not disks:
        raise ValueError("virt-sysprep needs at least one disk")
    argv = ["virt-sysprep"]
    if verbose:
        argv += ["-v", "-x"]
    for path, fmt in disks:
        argv += ["--format", fmt, "-a", path]
    argv += ["--operations", ",".join(operations), "--hostname", hostname]
    if "customize" in operations:
        argv += ["--truncate", "/etc/machine-id"]
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
