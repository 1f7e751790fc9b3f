"""Seal options (API field ``seal_options``, and the New Template form).

Every value is validated here and ends up as one argv element of virt-sysprep (never through a
shell). The root password is hashed (SHA-512 crypt) the moment it is accepted: only the hash is
stored, and it reaches the guest through ``--edit /etc/shadow``, so the plaintext is never stored,
logged, echoed, or sent to a host.
"""

from __future__ import annotations

import re
import subprocess
import zoneinfo

from rest_framework import serializers

from hostjobs.transport import parse_host_key
from sealing.sysprep import FORBIDDEN_OPERATIONS, REQUIRED_OPERATIONS

HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
OPERATION = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


def hash_password(password: str) -> str:
    """SHA-512 crypt of ``password`` (openssl reads it on stdin: it is never in an argv)."""
    out = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n", capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def _line(value: str, what: str, limit: int = 1024) -> str:
    if not value or len(value) > limit or any(c in value for c in "\n\r\0"):
        raise serializers.ValidationError(f"{what}: 1 to {limit} characters on one line")
    return value


class SSHKeySerializer(serializers.Serializer):
    user = serializers.CharField(max_length=32)
    key = serializers.CharField(max_length=16384)

    def validate_user(self, value):
        if not USER.match(value):
            raise serializers.ValidationError("a Linux user name (lower case letters, digits, _ and -)")
        return value

    def validate_key(self, value):
        value = _line(value.strip(), "key", 16384)
        try:
            ktype, blob = parse_host_key(value)
        except ValueError as e:
            raise serializers.ValidationError(str(e)) from None
        comment = value.split(None, 2)[2] if len(value.split(None, 2)) == 3 else ""
        return " ".join(p for p in (ktype, blob, comment) if p)


# Bounds: every value is one argv element of virt-sysprep on the host, and the kernel refuses an exec
# whose single argument exceeds MAX_ARG_STRLEN (131072 bytes) or whose argv+environment exceeds ARG_MAX
# (2 MiB with an 8 MiB stack). The options' share of the command is kept to COMMAND_LIMIT, well below
# both, so an accepted request never fails on the host after its disks were copied.
MAX_SSH_KEYS = 32
MAX_ACCOUNTS = 256
MAX_OPERATIONS = 64
MAX_FIRSTBOOT_COMMANDS = 16
COMMAND_LIMIT = 64 * 1024  # bytes of virt-sysprep argv (each element + its NUL) the options may make
_PLACEHOLDER_HASH = "$6$" + "s" * 16 + "$" + "h" * 86  # SHA-512 crypt: as long as the real hash
_PLACEHOLDER_LIB = "/var/lib/vmseal/lib/0123456789abcdef"


def command_size(options: dict) -> int:
    """Bytes of the virt-sysprep argv these (validated) options make over one disk, as the kernel counts
    them (each element and its NUL)."""
    from sealing.sysprep import REPORT_DISK, build_command

    opts = dict(options)
    if opts.pop("root_password", None):
        opts["root_password_hash"] = _PLACEHOLDER_HASH
    argv = build_command([("/var/lib/vmseal/templates/" + "0" * 36 + ".qcow2", "qcow2")], opts,
                         prepare_script=f"{_PLACEHOLDER_LIB}/guest_prepare.sh",
                         audit_script=f"{_PLACEHOLDER_LIB}/guest_audit.sh",
                         firstboot_script=f"{_PLACEHOLDER_LIB}/guest_firstboot.sh",
                         firstboot_agent=f"{_PLACEHOLDER_LIB}/vmseal_firstboot.sh", report_disk=REPORT_DISK).argv
    return sum(len(a.encode()) + 1 for a in argv)


def check_command_size(data: dict) -> None:
    """Refuse options whose virt-sysprep command would exceed COMMAND_LIMIT, naming the field that
    adds the most to it."""
    size = command_size(data)
    if size <= COMMAND_LIMIT:
        return
    field = max(data, key=lambda k: size - command_size({f: v for f, v in data.items() if f != k}))
    raise serializers.ValidationError({field: [
        f"the seal options make a virt-sysprep command of {size} bytes, over the limit of {COMMAND_LIMIT}: "
        f"give fewer or shorter values"]})


class SealOptionsSerializer(serializers.Serializer):
    class Meta:
        validators = [check_command_size]

    operations_add = serializers.ListField(child=serializers.CharField(max_length=64), required=False,
                                           max_length=MAX_OPERATIONS)
    operations_remove = serializers.ListField(child=serializers.CharField(max_length=64), required=False,
                                              max_length=MAX_OPERATIONS)
    hostname = serializers.CharField(required=False, max_length=253)
    timezone = serializers.CharField(required=False, max_length=64)
    root_password = serializers.CharField(required=False, write_only=True, min_length=8, max_length=256,
                                          trim_whitespace=False)
    ssh_keys = SSHKeySerializer(many=True, required=False, max_length=MAX_SSH_KEYS)
    firstboot_commands = serializers.ListField(child=serializers.CharField(max_length=1024, trim_whitespace=False),
                                               required=False, max_length=MAX_FIRSTBOOT_COMMANDS)
    remove_user_accounts = serializers.ListField(child=serializers.CharField(max_length=32), required=False,
                                                 max_length=MAX_ACCOUNTS)
    keep_user_accounts = serializers.ListField(child=serializers.CharField(max_length=32), required=False,
                                               max_length=MAX_ACCOUNTS)

    def validate_operations_add(self, value):
        return self._ops(value)

    def validate_operations_remove(self, value):
        return self._ops(value)

    def _ops(self, value):
        bad = [v for v in value if not OPERATION.match(v)]
        if bad:
            raise serializers.ValidationError(f"not an operation name: {bad[0]!r}")
        return sorted(set(value))

    def validate_hostname(self, value):
        value = value.lower()
        if not HOSTNAME.match(value):
            raise serializers.ValidationError("a host name: letters, digits and '-', dot-separated labels")
        return value

    def validate_timezone(self, value):
        if value not in zoneinfo.available_timezones():
            raise serializers.ValidationError(f"unknown time zone {value!r} (use e.g. Europe/Berlin)")
        return value

    def validate_root_password(self, value):
        return _line(value, "root password", 256)

    def validate_firstboot_commands(self, value):
        return [_line(v, "first-boot command") for v in value]

    def _users(self, value):
        bad = [v for v in value if not USER.match(v)]
        if bad:
            raise serializers.ValidationError(f"not a user name: {bad[0]!r}")
        return sorted(set(value))

    def validate_remove_user_accounts(self, value):
        return self._users(value)

    def validate_keep_user_accounts(self, value):
        return self._users(value)

    def validate(self, data):
        unknown = sorted(set(self.initial_data) - set(self.fields)) if isinstance(self.initial_data, dict) else []
        if unknown:
            raise serializers.ValidationError({unknown[0]: [f"unknown seal option; known: {', '.join(self.fields)}"]})
        both = set(data.get("operations_add", [])) & set(data.get("operations_remove", []))
        if both:
            raise serializers.ValidationError({"operations_remove": [f"also in operations_add: {sorted(both)}"]})
        if data.get("remove_user_accounts") and data.get("keep_user_accounts"):
            raise serializers.ValidationError({"keep_user_accounts": ["give remove_user_accounts or "
                                                                      "keep_user_accounts, not both"]})
        required = sorted(set(data.get("operations_remove", [])) & set(REQUIRED_OPERATIONS))
        if required:
            raise serializers.ValidationError({"operations_remove": [
                f"{required[0]!r} cannot be removed: vmseal's Linux guard and audit run in the "
                f"{' and '.join(REQUIRED_OPERATIONS)} operation"]})
        forbidden = sorted(set(data.get("operations_add", [])) & set(FORBIDDEN_OPERATIONS))
        if forbidden:
            raise serializers.ValidationError({"operations_add": [
                f"{forbidden[0]!r} cannot be added: it runs a program on the host over the guest's "
                "FUSE-mounted files, and vmseal never lets guest content reach the host"]})
        return data

    def to_stored(self) -> dict:
        """What the Template keeps: the validated options, the password replaced by its hash."""
        data = dict(self.validated_data)
        if "root_password" in data:
            data["root_password_hash"] = hash_password(data.pop("root_password"))
        if "ssh_keys" in data:
            data["ssh_keys"] = [dict(k) for k in data["ssh_keys"]]
        return data


def check_operations(options: dict, available: dict[str, bool]) -> None:
    """Refuse operation names the host's virt-sysprep does not know."""
    for field in ("operations_add", "operations_remove"):
        unknown = [op for op in options.get(field, []) if op not in available]
        if unknown:
            raise serializers.ValidationError({field: [f"virt-sysprep on this host has no operation {unknown[0]!r}"]})


def public(stored: dict) -> dict:
    """Stored options as shown by the API and the admin: the password hash is never shown."""
    out = {k: v for k, v in stored.items() if k != "root_password_hash"}
    if "root_password_hash" in stored:
        out["root_password"] = "(set)"
    return out
