"""The rules for a VM's fields. The Vm model's fields use them, so the API, the admin and the
``vm_create`` command refuse the same values with the same messages. Every value here ends up on a
host (a libvirt domain name, the guest's hostname and keys, the seed ISO), so each is held to a
strict shape: no shell metacharacters, no path separators, no markup, one line."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError

from hostjobs.transport import parse_host_key
from sealing.options import HOSTNAME, MAX_SSH_KEYS

# A libvirt domain name that is also a safe file-name component and an XML text node as it is.
VM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# crypt(3) hashes glibc/libxcrypt can check: SHA-512, SHA-256, yescrypt, gost-yescrypt, bcrypt, scrypt.
PASSWORD_HASH = re.compile(r"\$(6|5|y|gy|2[aby]|7)\$[./A-Za-z0-9$=,]{8,240}")
MAX_KEY = 16384


def validate_vm_name(value: str) -> None:
    if not VM_NAME.fullmatch(value or "") or value.endswith("."):
        raise ValidationError("a VM name of 1 to 63 letters, digits, '.', '_' and '-', starting with a letter or a "
                              "digit (it is the libvirt domain's name and part of file names on the host)",
                              code="invalid")


def validate_hostname(value: str) -> None:
    if not HOSTNAME.fullmatch(value or ""):
        raise ValidationError("an RFC 1123 host name: lower-case letters, digits and '-', in dot-separated labels of "
                              "at most 63 characters, 253 in all", code="invalid")


def normalize_key(value) -> str:
    """One authorized_keys line as ``<type> <base64> [comment]``, or ValidationError (no options: a
    key line with ``command=`` or ``from=`` in front of it is refused)."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_KEY or any(c in value for c in "\n\r\0"):
        raise ValidationError(f"an SSH public key on one line (at most {MAX_KEY} characters)", code="invalid")
    try:
        ktype, blob = parse_host_key(value)
    except ValueError as e:
        raise ValidationError(f"not an SSH public key: {e}", code="invalid") from None
    parts = value.strip().split(None, 2)
    comment = parts[2] if len(parts) == 3 else ""
    if any(not c.isprintable() for c in comment) or "\\" in comment:
        # a backslash ending a line continues it in virt-customize's commands file: none at all
        raise ValidationError("an SSH key comment of printable characters, without backslashes", code="invalid")
    return " ".join(p for p in (ktype, blob, comment) if p)


def validate_ssh_keys(value) -> None:
    if not isinstance(value, list):
        raise ValidationError("a list of SSH public key lines", code="invalid")
    if len(value) > MAX_SSH_KEYS:
        raise ValidationError(f"at most {MAX_SSH_KEYS} SSH keys", code="too_many")
    for i, key in enumerate(value):
        try:
            normalize_key(key)
        except ValidationError as e:
            raise ValidationError(f"key {i + 1}: {e.messages[0]}", code="invalid") from None


def validate_password_hash(value: str) -> None:
    """A crypt(3) hash, never a password: '$6$...' (SHA-512), '$5$', '$y$' (yescrypt), '$2b$' (bcrypt)."""
    if value and not PASSWORD_HASH.fullmatch(value):
        raise ValidationError("a crypt(3) password hash such as '$6$<salt>$<hash>' (openssl passwd -6, mkpasswd), "
                              "not a password", code="invalid")
