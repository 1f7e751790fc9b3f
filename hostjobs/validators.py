"""The rules for Host fields. The model's fields and ``Host.clean()`` use them, so the API, the admin
and ``host_add`` refuse the same values with the same messages (README "Admin and command line")."""

from __future__ import annotations

import ipaddress
import posixpath
import re
import unicodedata
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError

# A name shown in lists, messages and the commands' arguments: printable, no layout tricks.
NAME_INVALID = "printable characters without control or format characters and without leading or trailing spaces"
# POSIX's portable user name: the portable filename characters, not starting with '-' (nor '.' or a digit,
# as useradd requires).
SSH_USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
POOL_COMPONENT_RE = re.compile(r"[A-Za-z0-9._+-]+")
GUESTFS_SETTINGS_RE = re.compile(r"[A-Za-z0-9_:=,-]*")
HOSTNAME_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")

# libvirt's pool build makes the pool directory root's, mode 0711, also when it exists (a pool at /tmp
# loses /tmp's sticky bit), and the pool holds whatever files are in it: a pool directory is a dedicated
# one. Never a pool, nor anything under one: the system's own trees, directories shared with every local
# user or cleared at boot, users' homes, libvirt's own state and the host helper's own files.
POOL_FORBIDDEN_TREES = (
    "/bin", "/boot", "/dev", "/etc", "/home", "/lost+found", "/proc", "/root", "/run", "/sbin", "/sys", "/tmp",
    "/usr", "/var/lib/libvirt", "/var/lib/vmseal/hooks.json", "/var/lib/vmseal/hooks.json.tmp",
    "/var/lib/vmseal/jobs", "/var/lib/vmseal/lib", "/var/lib/vmseal/console", "/var/lib/vmseal/locks",
    "/var/lock", "/var/run", "/var/tmp",
)  # and every top-level directory whose name starts with "lib" (/lib, /lib64, /libx32, ...)
# Shared parents: a dedicated directory below one is fine (/srv/vmseal, /var/lib/vmseal/templates),
# the directory itself is not.
POOL_FORBIDDEN_EXACT = (
    "/", "/media", "/mnt", "/opt", "/srv", "/var", "/var/backups", "/var/cache", "/var/lib", "/var/lib/vmseal",
    "/var/local", "/var/log", "/var/mail", "/var/opt", "/var/spool",
)


def validate_name(value: str) -> None:
    if not value or value != value.strip() or any(
        unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") for c in value
    ):
        raise ValidationError(f"a name of {NAME_INVALID}", code="invalid")


def validate_address(value: str) -> None:
    """After GenericIPAddressField's own check (an IP literal; it drops an IPv6 zone): one a host can have."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ValidationError("an IPv4 or IPv6 address", code="invalid") from None
    if ip.is_unspecified or ip.is_multicast:
        raise ValidationError("the address of one host (not unspecified, not multicast)", code="not_one_host")


def validate_ssh_user(value: str) -> None:
    if not SSH_USER_RE.fullmatch(value):
        raise ValidationError("a POSIX user name: letters, digits, '.', '_' and '-', starting with a letter or '_'",
                              code="invalid")


def validate_host_key(value: str) -> None:
    from hostjobs.transport import parse_host_key

    try:
        parse_host_key(value)
    except ValueError as e:
        raise ValidationError(str(e), code="invalid") from None
    if "\n" in value.strip() or "\r" in value:
        raise ValidationError("one key line", code="invalid")


def _under(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree + "/")


def validate_pool_path(value: str) -> None:
    if not value.startswith("/") or value.startswith("//") or posixpath.normpath(value) != value:
        raise ValidationError("an absolute, normalised directory path (no '..', '.', '//' or trailing '/')",
                              code="invalid")
    parts = value.split("/")[1:]
    if value != "/" and not all(POOL_COMPONENT_RE.fullmatch(p) for p in parts):
        raise ValidationError("a directory path of letters, digits and '.', '_', '+', '-'", code="invalid")
    if value in POOL_FORBIDDEN_EXACT or parts[0].startswith("lib") or any(
        _under(value, t) for t in POOL_FORBIDDEN_TREES
    ):
        raise ValidationError(f"{value} is not a dedicated directory: libvirt makes the pool directory root's "
                              "with mode 0711; use one of its own, e.g. /var/lib/vmseal/templates",
                              code="system_directory")


def validate_guestfs_backend_settings(value: str) -> None:
    if not GUESTFS_SETTINGS_RE.fullmatch(value):
        raise ValidationError("letters, digits and _-:=, only (e.g. force_tcg)", code="invalid")


def validate_callback_url(value: str) -> None:
    """Where the host's runner and hooks POST their notifications: an http(s) URL of the app."""
    message = "an http:// or https:// URL with a host, e.g. http://app.example:8000/api/callbacks/"
    if not value.isascii() or any(c.isspace() or not c.isprintable() for c in value):
        raise ValidationError(message, code="invalid")
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        raise ValidationError(message, code="invalid") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValidationError(message, code="invalid")
    if url.username is not None or url.password is not None or url.fragment:
        raise ValidationError(f"{message}; without user, password or fragment", code="invalid")
    try:
        ipaddress.ip_address(url.hostname)
    except ValueError:
        if not HOSTNAME_RE.fullmatch(url.hostname) or ":" in url.hostname:
            raise ValidationError(message, code="invalid") from None
