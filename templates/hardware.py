"""A VM's hardware: the template's source domain XML without identity or state (``scrub``), and a new
VM's domain built from it (``build``). Pure: no libvirt, no host.

``scrub`` runs once, when a template is made; what it returns is stored with the template. ``build``
runs for each VM. Every value is put in through ElementTree (element text and attributes), never by
formatting strings, so a name or path cannot add markup; values that XML 1.0 cannot carry at all (control
characters) are refused with ValueError.
"""

from __future__ import annotations

import re
import secrets
import uuid as uuidlib
import xml.etree.ElementTree as ET

# Elements of <domain> that name or describe one machine, or hold its state.
_DOMAIN_IDENTITY = ("name", "uuid", "genid", "title", "description", "metadata", "sysinfo", "seclabel")
# Character devices whose source is a host resource of this one VM (a file, a device, a port): such a
# device cannot be shared by several VMs, so it is dropped. unix and pty sources are made per VM by libvirt.
_CHR_HOST_TYPES = {"file", "pipe", "dev", "tcp", "udp", "nmdm"}
_CHR_PER_VM_TYPES = {"unix", "pty"}
_FORMATS = {"qcow2", "raw"}
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
# XML 1.0 cannot carry C0 controls other than tab/newline/CR; we refuse those too in single-line values.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]")

ET.register_namespace("qemu", "http://libvirt.org/schemas/domain/qemu/1.0")


class HardwareError(ValueError):
    """The hardware XML, or a value given to build(), cannot make a domain."""


def _parse(xml: str) -> ET.Element:
    # libvirt never writes a document type declaration; refusing one keeps entity tricks out of expat.
    if "<!DOCTYPE" in xml or "<!ENTITY" in xml:
        raise HardwareError("domain XML with a document type declaration")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise HardwareError(f"domain XML does not parse: {e}") from e
    if root.tag != "domain":
        raise HardwareError(f"not a domain definition: <{root.tag}>")
    return root


def _serialize(root: ET.Element) -> str:
    for el in root.iter():  # pretty-print from scratch: removed elements leave their whitespace behind
        if el.text is not None and not el.text.strip():
            el.text = None
        if el.tail is not None and not el.tail.strip():
            el.tail = None
    ET.indent(root, "  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def _remove_all(parent: ET.Element, tag: str) -> None:
    for child in parent.findall(tag):
        parent.remove(child)


def _remove_everywhere(root: ET.Element, tag: str) -> None:
    for parent in list(root.iter()):
        _remove_all(parent, tag)


def scrub(xml: str) -> str:
    """The source VM's domain XML without identity or state: what every VM made from the template shares.

    Removed: the domain's ``id``, name, uuid, genid, title, description, metadata, sysinfo (and the
    ``<smbios mode='sysinfo'>`` that points at it), every seclabel and alias; the NVRAM file (its ``template``
    and the loader stay: libvirt makes each VM its own variables from that template); an emulated TPM's
    ``persistent_state`` and encryption secret (libvirt keeps TPM state per domain UUID, so each VM starts
    with a fresh TPM) and any other TPM (a host's device or socket) entirely; CD-ROM and floppy disks;
    each disk's source, backing chain, mirror, encryption, auth, serial and wwn; each interface's MAC,
    host-side target device, network port id and virtualport ids; graphics passwords and fixed ports (made
    automatic); a vsock's fixed CID; sources and logs of serial, console, parallel and channel devices
    (unix and pty ones are made again per VM by libvirt; those bound to a host file, device or port are
    dropped, as several VMs cannot share them); a console's ``tty``; a channel's connection state.
    Kept: everything else, e.g. machine, CPU, memory, firmware loader, direct kernel boot (kernel, initrd,
    cmdline), the disk elements with their target, bus, driver and address.
    """
    root = _parse(xml)
    root.attrib.pop("id", None)
    for tag in _DOMAIN_IDENTITY:
        _remove_all(root, tag)
    _remove_everywhere(root, "seclabel")
    _remove_everywhere(root, "alias")
    os_el = root.find("os")
    if os_el is not None:
        for nvram in os_el.findall("nvram"):
            # the variables' file is the machine's state; the template it came from is its firmware's choice
            # (e.g. Secure Boot keys enrolled), so a VM's own file is made from the same one
            keep = {k: v for k, v in nvram.attrib.items() if k in ("template", "templateFormat")}
            if "template" not in keep:
                os_el.remove(nvram)
                continue
            nvram.clear()
            nvram.attrib.update(keep)
        for smbios in os_el.findall("smbios"):
            if smbios.get("mode") == "sysinfo":
                os_el.remove(smbios)
    devices = root.find("devices")
    if devices is not None:
        _scrub_devices(devices)
    return _serialize(root)


def _scrub_devices(devices: ET.Element) -> None:
    for tpm in devices.findall("tpm"):
        backend = tpm.find("backend")
        if backend is None or backend.get("type") != "emulator":  # a host's TPM or socket: not shareable
            devices.remove(tpm)
            continue
        backend.attrib.pop("persistent_state", None)
        _remove_all(backend, "encryption")
    for disk in devices.findall("disk"):
        if disk.get("device", "disk") in ("cdrom", "floppy"):
            devices.remove(disk)
            continue
        for tag in ("source", "backingStore", "mirror", "encryption", "auth", "serial", "wwn"):
            _remove_all(disk, tag)
    for iface in devices.findall("interface"):
        for tag in ("mac", "target"):
            _remove_all(iface, tag)
        for source in iface.findall("source"):
            source.attrib.pop("portid", None)
        for params in iface.findall("virtualport/parameters"):
            for attr in ("interfaceid", "instanceid"):
                params.attrib.pop(attr, None)
    for graphics in devices.findall("graphics"):
        for attr in ("passwd", "passwdValidTo", "connected"):
            graphics.attrib.pop(attr, None)
        if "port" in graphics.attrib or "tlsPort" in graphics.attrib:
            graphics.attrib.pop("port", None)
            graphics.attrib.pop("tlsPort", None)
            graphics.set("autoport", "yes")
        if graphics.get("websocket") not in (None, "-1"):
            graphics.set("websocket", "-1")
        for listen in graphics.findall("listen"):
            listen.attrib.pop("socket", None)
    for cid in devices.findall("vsock/cid"):
        if cid.get("auto") == "no" or "address" in cid.attrib:
            cid.attrib.pop("address", None)
            cid.set("auto", "yes")
    for tag in ("serial", "console", "parallel", "channel"):
        for chr_dev in devices.findall(tag):
            kind = chr_dev.get("type", "pty")
            if kind in _CHR_HOST_TYPES:
                devices.remove(chr_dev)
                continue
            chr_dev.attrib.pop("tty", None)
            for target in chr_dev.findall("target"):
                target.attrib.pop("state", None)
            _remove_all(chr_dev, "log")
            if kind in _CHR_PER_VM_TYPES:
                _remove_all(chr_dev, "source")


def disk_targets(hardware: str) -> list[str]:
    """The target devices of the hardware's disks (those build() needs a volume for), in order."""
    devices = _parse(hardware).find("devices")
    if devices is None:
        return []
    return [d.find("target").get("dev") for d in devices.findall("disk") if d.find("target") is not None]


def new_mac() -> str:
    """A random MAC address in QEMU's locally administered range 52:54:00."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def _single_line(what: str, value: str) -> str:
    if not isinstance(value, str) or not value or _CONTROL_RE.search(value):
        raise HardwareError(f"{what}: must be a non-empty string without control characters")
    return value


def _path(what: str, value: str) -> str:
    _single_line(what, value)
    if not value.startswith("/"):
        raise HardwareError(f"{what}: not an absolute path: {value!r}")
    return value


def _machine(root: ET.Element) -> str:
    t = root.find("os/type")
    return (t.get("machine") or "") if t is not None else ""


def _free_target(devices: ET.Element, prefix: str, limit: int) -> str:
    used = {t.get("dev") for t in devices.findall("disk/target")}
    for i in range(limit):
        dev = prefix + chr(ord("a") + i)
        if dev not in used:
            return dev
    raise HardwareError(f"no free {prefix}* target for the seed CD-ROM")


def build(hardware: str, *, name: str, uuid: str, disks: list[tuple[str, str, str]], seed: str | None,
          macs: list[str] | None = None, console_log: str | None = None) -> str:
    """A new VM's domain XML from the template's scrubbed ``hardware``.

    ``disks``: (target dev, volume path, format) for each disk of the hardware, matched by target; a disk
    of the hardware with no volume, a volume for no disk, a duplicate target: HardwareError (a
    ValueError). ``seed``: the NoCloud ISO, attached as a read-only CD-ROM (sata on q35 machines, ide
    otherwise) on a target no disk uses. ``macs``: one per interface, in order (default: new_mac()).
    One ``<serial type='pty'>`` (its log in ``console_log`` when given) and its ``<console>`` replace
    any serial and console devices. Nothing else is added.
    """
    root = _parse(hardware)
    name = _single_line("name", name)
    try:
        uuid = str(uuidlib.UUID(uuid))
    except (ValueError, TypeError, AttributeError) as e:
        raise HardwareError(f"uuid: not a UUID: {uuid!r}") from e
    for tag in ("name", "uuid"):
        _remove_all(root, tag)
    name_el = ET.Element("name")
    name_el.text = name
    uuid_el = ET.Element("uuid")
    uuid_el.text = uuid
    root.insert(0, name_el)
    root.insert(1, uuid_el)

    devices = root.find("devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    _set_disks(devices, disks)
    _set_macs(devices, macs)
    if seed is not None:
        _add_seed(devices, _path("seed", seed), q35="q35" in _machine(root))
    _set_console(devices, None if console_log is None else _path("console_log", console_log))
    return _serialize(root)


def _set_disks(devices: ET.Element, disks: list[tuple[str, str, str]]) -> None:
    wanted: dict[str, tuple[str, str]] = {}
    for target, path, fmt in disks:
        _single_line("disk target", target)
        if target in wanted:
            raise HardwareError(f"disk target {target!r} given twice")
        if fmt not in _FORMATS:
            raise HardwareError(f"disk {target}: format {fmt!r} is not one of {sorted(_FORMATS)}")
        wanted[target] = (_path(f"disk {target}", path), fmt)
    seen = set()
    for disk in devices.findall("disk"):
        target_el = disk.find("target")
        target = target_el.get("dev") if target_el is not None else None
        if target not in wanted:
            raise HardwareError(f"the hardware's disk {target!r} has no volume")
        if disk.get("device", "disk") != "disk":
            raise HardwareError(f"disk {target}: a {disk.get('device')} cannot be backed by a volume file")
        path, fmt = wanted[target]
        seen.add(target)
        disk.set("type", "file")
        _remove_all(disk, "source")
        driver = disk.find("driver")
        if driver is None:
            driver = ET.Element("driver", {"name": "qemu"})
            disk.insert(0, driver)
        driver.set("type", fmt)
        source = ET.Element("source")
        source.set("file", path)
        disk.insert(list(disk).index(driver) + 1, source)
    unknown = sorted(set(wanted) - seen)
    if unknown:
        raise HardwareError(f"no disk of the hardware has target {', '.join(unknown)}")


def _set_macs(devices: ET.Element, macs: list[str] | None) -> None:
    ifaces = devices.findall("interface")
    if macs is None:
        macs = [new_mac() for _ in ifaces]
    if len(macs) != len(ifaces):
        raise HardwareError(f"{len(macs)} MAC addresses for {len(ifaces)} interfaces")
    if len(set(macs)) != len(macs):
        raise HardwareError("the same MAC address twice")
    for iface, mac in zip(ifaces, macs, strict=True):
        if not isinstance(mac, str) or not _MAC_RE.fullmatch(mac) or int(mac[:2], 16) & 1:
            raise HardwareError(f"not a unicast MAC address in lower case: {mac!r}")
        _remove_all(iface, "mac")
        iface.insert(0, ET.Element("mac", {"address": mac}))


def _add_seed(devices: ET.Element, path: str, *, q35: bool) -> None:
    bus, target = ("sata", _free_target(devices, "sd", 26)) if q35 else ("ide", _free_target(devices, "hd", 4))
    cdrom = ET.Element("disk", {"type": "file", "device": "cdrom"})
    ET.SubElement(cdrom, "driver", {"name": "qemu", "type": "raw"})
    ET.SubElement(cdrom, "source").set("file", path)
    ET.SubElement(cdrom, "target", {"dev": target, "bus": bus})
    ET.SubElement(cdrom, "readonly")
    # after the last disk: libvirt keeps device order, and the guest's disks keep their names
    last = max((i for i, el in enumerate(devices) if el.tag == "disk"), default=-1)
    devices.insert(last + 1, cdrom)


def _set_console(devices: ET.Element, console_log: str | None) -> None:
    old = [el for el in devices if el.tag in ("serial", "console")]
    at = list(devices).index(old[0]) if old else len(devices)
    for el in old:
        devices.remove(el)
    serial = ET.Element("serial", {"type": "pty"})
    if console_log is not None:
        ET.SubElement(serial, "log", {"file": console_log, "append": "off"})
    console = ET.Element("console", {"type": "pty"})
    ET.SubElement(console, "target", {"type": "serial"})
    devices.insert(at, serial)
    devices.insert(at + 1, console)
