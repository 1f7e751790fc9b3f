"""The test hosts themselves (scripts/testhosts.py): what the end-to-end tests rely on."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from tests.fixtures.testhosts import down, up

pytestmark = pytest.mark.e2e


def _connect_s(address: str, timeout: float = 5.0) -> float:
    """Seconds to open a TCP connection to the host's sshd and read its banner (raises on timeout)."""
    started = time.monotonic()
    with socket.create_connection((address, 22), timeout=timeout) as s:
        assert s.recv(8) == b"SSH-2.0-"
    return time.monotonic() - started


def _mac(name: str) -> str:
    out = subprocess.run(["nsenter", f"--net=/run/netns/{name}", "--", "ip", "-o", "link", "show", "type", "veth"],
                         capture_output=True, text=True, check=True).stdout
    return out.split("link/ether ")[1].split()[0]


def test_a_slot_used_again_is_reachable_at_once():
    """A host torn down and another made in its slot: the new one answers at once. (With a random MAC
    per host, the machine's neighbour entry for the address kept the old MAC and the first connections
    to the new host were black-holed for 6-8 s, past the app's 5 s SSH ConnectTimeout: a fault-matrix
    cell failed in CI on a template POST refused with "cannot reach libvirt".)"""
    pid = os.getpid()
    first, keeper, second = (f"vmseal-s{pid}{c}" for c in "akb")
    try:
        a = up(first)
        up(keeper)  # keeps the bridge (and its neighbour table) alive across the teardown
        _connect_s(a.address)
        mac = _mac(first)
        down(first)
        b = up(second)
        assert b.address == a.address, "the freed slot is taken again"
        assert _mac(second) == mac, "a slot keeps its MAC"
        assert _connect_s(b.address) < 1.0
    finally:
        for name in (first, keeper, second):
            down(name)
