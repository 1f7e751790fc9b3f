"""sealing.options: each seal option is checked (the field named when refused), the root password kept
only as a hash, operation names checked against the host's list.

Seal options have bounded sizes: whatever is accepted makes a virt-sysprep command the host's kernel
can exec (a single argument at most MAX_ARG_STRLEN = 131072 bytes, argv + environment at most ARG_MAX,
2 MiB); what is not is refused with a 400 naming the field, before any host is contacted (today such a
request was accepted and failed on the host after the disks were copied)."""

import base64
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealing import sysprep
from sealing.options import SealOptionsSerializer

MAX_ARG_STRLEN = 131072  # linux/binfmts.h: 32 pages
WELL_BELOW = 128 * 1024  # what the whole command may take (ARG_MAX is 2 MiB): well below both


def ssh_key(length: int) -> str:
    """A well-formed ed25519 public key line of about ``length`` characters."""
    raw = len(b"ssh-ed25519").to_bytes(4, "big") + b"ssh-ed25519" + os.urandom(max(32, length * 3 // 4 - 15))
    return "ssh-ed25519 " + base64.b64encode(raw).decode()


def user(i: int, length: int = 32) -> str:
    return ("u" + str(i)).ljust(length, "x")


def argv_of(data: dict) -> list[str]:
    opts = dict(data)
    if opts.pop("root_password", None):
        opts["root_password_hash"] = "$6$" + "s" * 16 + "$" + "h" * 86
    return sysprep.build_command([("/var/lib/vmseal/templates/" + "0" * 36 + ".qcow2", "qcow2")], opts,
                                 prepare_script="/var/lib/vmseal/lib/0123456789abcdef/guest_prepare.sh",
                                 audit_script="/var/lib/vmseal/lib/0123456789abcdef/guest_audit.sh",
                                 firstboot_script="/var/lib/vmseal/lib/0123456789abcdef/guest_firstboot.sh",
                                 firstboot_agent="/var/lib/vmseal/lib/0123456789abcdef/vmseal_firstboot.sh",
                                 report_disk=sysprep.REPORT_DISK).argv


@st.composite
def options(draw):
    data = {}
    if draw(st.booleans()):
        n, length = draw(st.integers(0, 80)), draw(st.sampled_from([80, 2000, 16000]))
        data["ssh_keys"] = [{"user": "root", "key": ssh_key(length)} for _ in range(n)]
    if draw(st.booleans()):
        data["remove_user_accounts"] = [user(i) for i in range(draw(st.integers(0, 6000)))]
    if draw(st.booleans()):
        data["firstboot_commands"] = ["x" * draw(st.integers(1, 1024))] * draw(st.integers(0, 20))
    if draw(st.booleans()):
        data["operations_add"] = [("op" + str(i)).ljust(64, "x") for i in range(draw(st.integers(0, 100)))]
    return data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(options())
def test_accepted_options_make_a_command_the_kernel_can_exec(data):
    ser = SealOptionsSerializer(data=data)
    if not ser.is_valid():
        return
    argv = argv_of(ser.validated_data)
    assert max(len(a.encode()) for a in argv) < MAX_ARG_STRLEN
    assert sum(len(a.encode()) + 1 for a in argv) <= WELL_BELOW


@pytest.mark.parametrize(("field", "value"), [
    ("remove_user_accounts", [user(i) for i in range(5000)]),      # one argument of 165 kB
    ("keep_user_accounts", [user(i) for i in range(257)]),         # more names than allowed
    ("ssh_keys", [{"user": "root", "key": ssh_key(80)}] * 33),     # more keys than allowed
    ("ssh_keys", [{"user": "root", "key": ssh_key(16000)}] * 8),   # each allowed, together 128 kB
    ("firstboot_commands", ["true"] * 17),
    ("operations_add", [f"op{i}" for i in range(65)]),
])
@pytest.mark.django_db
def test_oversized_options_are_a_400_naming_the_field_before_any_host_contact(admin_client, host, field, value):
    from hostjobs.models import HostJob
    from templates.models import IdempotencyKey, Template

    # the host's key is unusable: a request that passed validation would be refused naming "host"
    r = admin_client.post("/api/templates/", {"name": "t", "host": host.pk, "vm": "v", "seal": True,
                                              "seal_options": {field: value}}, content_type="application/json")
    assert r.status_code == 400, r.content[:300]
    assert list(r.json()) == ["seal_options"], r.content[:300]
    assert field in r.json()["seal_options"], r.content[:300]
    assert (Template.objects.count(), HostJob.objects.count(), IdempotencyKey.objects.count()) == (0, 0, 0)


def test_the_largest_options_of_each_kind_within_the_bounds_are_accepted():
    """The bounds refuse only what is too large: the most of each that fits is taken."""
    for data in ({"ssh_keys": [{"user": "root", "key": ssh_key(700)}] * 32},     # 32 RSA-4096-sized keys
                 {"remove_user_accounts": [user(i) for i in range(256)]},
                 {"firstboot_commands": ["x" * 1024] * 16, "hostname": "a" * 63},
                 {"operations_add": [("op" + str(i)).ljust(64, "x") for i in range(64)]}):
        ser = SealOptionsSerializer(data=data)
        assert ser.is_valid(), (list(data), ser.errors)


def _opts(data):
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
