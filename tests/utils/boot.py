"""Booting a VM on a real test host and reading what its guest says about itself on its serial console.

The guests scripts/debguest.py builds print one line, ``VMSEAL-PROBE {json}``, to ttyS0 once they are
up (vmseal-probe.service). A domain's serial console is logged by the host's virtlogd to the file named
in its ``<serial type='pty'><log file=... append='off'/>`` (``/var/lib/vmseal/console/<uuid>.log``, in the
test host's private /var/lib/vmseal): ``boot`` starts the domain through the host's libvirt and reads
that console stream — never a file of the guest. What the guest prints is its own word (it is the test's
own guest here), parsed as JSON and returned for the test to check.
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

PROBE_PREFIX = "VMSEAL-PROBE "
CONSOLE_DIR = "/var/lib/vmseal/console"


class BootFailed(AssertionError):
    """The domain did not print its probe line in time (the console's tail says why)."""


def console_log_of(host, domain_name: str) -> str:
    xml = ET.fromstring(host.virsh("dumpxml", domain_name).stdout)
    log = xml.find("./devices/serial/log")
    if log is None or not log.get("file"):
        raise ValueError(f"domain {domain_name} has no serial console log file")
    return log.get("file")


def probe_of(console: str) -> dict | None:
    """The last well-formed probe line of a console stream, parsed, or None."""
    found = None
    for line in console.splitlines():
        i = line.find(PROBE_PREFIX)
        if i < 0:
            continue
        try:
            found = json.loads(line[i + len(PROBE_PREFIX):].strip())
        except ValueError:
            continue
    return found


def read_console(host, path: str) -> str:
    return host.exec("cat", path, check=False).stdout


def boot(host, domain_name: str, timeout: float = 240) -> dict:
    """Start ``domain_name`` on ``host`` and return its probe JSON (see ``wait_probe``)."""
    log = console_log_of(host, domain_name)
    host.exec("mkdir", "-p", "-m", "0700", log.rsplit("/", 1)[0])
    host.virsh("start", domain_name)
    return wait_probe(host, domain_name, timeout)


def wait_probe(host, domain_name: str, timeout: float = 240) -> dict:
    """The probe JSON of a started domain (plus ``boot_s``, the seconds from this call to the line).
    Raises BootFailed with the console's tail when no probe line came in time or the domain stopped."""
    log = console_log_of(host, domain_name)
    started = time.monotonic()
    console = ""
    while time.monotonic() - started < timeout:
        console = read_console(host, log)
        found = probe_of(console)
        if found is not None:
            found["boot_s"] = round(time.monotonic() - started, 1)
            return found
        if host.virsh("domstate", domain_name, check=False).stdout.strip() not in ("running", "paused"):
            break
        time.sleep(2)
    raise BootFailed(f"{domain_name}: no {PROBE_PREFIX.strip()} line after {time.monotonic() - started:.0f} s; "
                     f"console tail:\n{console[-4000:]}")


def destroy(host, domain_name: str) -> None:
    """Stop and undefine a domain, whatever its state (tests' teardown)."""
    host.virsh("destroy", domain_name, check=False)
    host.virsh("undefine", domain_name, check=False)


def domain_xml(name: str, uuid: str, disk: str, *, kernel: str, initrd: str, cmdline: str,
               seed: str | None = None, console_log: str | None = None, memory_mib: int = 512) -> str:
    """A TCG domain booting ``kernel``/``initrd`` directly, with ``disk`` (qcow2) as vda, ``seed`` (an ISO)
    as a read-only IDE CD-ROM, and the serial console logged to ``console_log`` (default
    CONSOLE_DIR/<uuid>.log). qemu runs as root without relabelling (test only): the DAC driver would
    otherwise chown the disk's backing chain, i.e. the template's volume."""
    console_log = console_log or f"{CONSOLE_DIR}/{uuid}.log"
    cdrom = ""
    if seed:
        cdrom = (f"<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file={quoteattr(seed)}/>"
                 "<target dev='hdc' bus='ide'/><readonly/></disk>")
    return (
        f"<domain type='qemu'><name>{escape(name)}</name><uuid>{escape(uuid)}</uuid>"
        f"<memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type>"
        f"<kernel>{escape(kernel)}</kernel><initrd>{escape(initrd)}</initrd><cmdline>{escape(cmdline)}</cmdline></os>"
        "<features><acpi/></features><on_reboot>destroy</on_reboot>"
        "<devices>"
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file={quoteattr(disk)}/>"
        f"<target dev='vda' bus='virtio'/></disk>{cdrom}"
        f"<serial type='pty'><log file={quoteattr(console_log)} append='off'/><target port='0'/></serial>"
        "<console type='pty'><target type='serial' port='0'/></console>"
        "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>"
        "</devices>"
        "<seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>"
        "</domain>"
    )
