"""libvirt over ``qemu+ssh``, opened lazily, one connection per host per process.

Follows nova's ``host.py``: the default event loop is registered before the first ``open()`` and
runs forever in one daemon thread (keepalive and close callbacks need it); a connection whose
transport broke (VIR_FROM_REMOTE / VIR_FROM_RPC) is dropped and re-opened once. Every libvirtError
leaves this module as one of vmseal's own exceptions.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import quote

import libvirt

from hostjobs import transport
from hostjobs.errors import DomainNotFound, HostError, HostKeyMismatch, HostUnreachable, StorageError

log = logging.getLogger("vmseal.virt")

_lock = threading.Lock()
_conns: dict[tuple, libvirt.virConnect] = {}
_loop_pid: int | None = None
STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "no state",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}


def _ensure_event_loop() -> None:
    global _loop_pid
    if _loop_pid == os.getpid():
        return
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors are raised, not printed
    libvirt.virEventRegisterDefaultImpl()

    def loop():
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=loop, name="libvirt-event-loop", daemon=True).start()
    _loop_pid = os.getpid()


def uri(host) -> str:
    target = transport.SSHTarget.of(host).materialize()
    return f"{host.libvirt_uri}?command={quote(str(target.wrapper), safe='/')}&no_tty=1"


def _key(host) -> tuple:
    return (os.getpid(), host.pk, host.address, host.port, host.ssh_user, host.host_key)


def _drop(key) -> None:
    with _lock:
        conn = _conns.pop(key, None)
    if conn is not None:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass


def connection(host) -> libvirt.virConnect:
    key = _key(host)
    with _lock:
        conn = _conns.get(key)
        if conn is not None:
            try:
                if conn.isAlive():
                    return conn
            except libvirt.libvirtError:
                pass
            _conns.pop(key, None)
        _ensure_event_loop()
        try:
            conn = libvirt.open(uri(host))
        except libvirt.libvirtError as e:
            raise _map(e, host) from None
        try:
            conn.setKeepAlive(5, 3)
            conn.registerCloseCallback(lambda _c, reason, k: _on_close(k, reason), key)
        except libvirt.libvirtError:
            log.warning("keepalive/close callback unavailable for %s", host)
        _conns[key] = conn
        return conn


def _on_close(key, reason) -> None:
    log.info("libvirt connection %s closed (reason %s)", key[1:4], reason)
    with _lock:
        _conns.pop(key, None)


def _map(e: libvirt.libvirtError, host) -> HostError:
    msg = e.get_error_message() or str(e)
    code, dom = e.get_error_code(), e.get_error_domain()
    if "host key" in msg.lower() or "Host key verification failed" in msg:
        return HostKeyMismatch(f"host {host} did not present its pinned host key; refusing to connect",
                               detail=msg)
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return DomainNotFound(f"no VM of that name on host {host}", detail=msg)
    # A system error of the transport (ssh, the socket) is the host's reach; one of a driver (qemu could
    # not open a disk, say) is an answer from a reachable host.
    if dom in (libvirt.VIR_FROM_REMOTE, libvirt.VIR_FROM_RPC) or (
            code == libvirt.VIR_ERR_SYSTEM_ERROR and dom in (libvirt.VIR_FROM_NONE, libvirt.VIR_FROM_SSH,
                                                             libvirt.VIR_FROM_LIBSSH)):
        return HostUnreachable(f"cannot reach libvirt on host {host}: {msg}", detail=msg)
    if dom == libvirt.VIR_FROM_STORAGE:
        return StorageError(f"libvirt storage error on host {host}: {msg}", detail=msg)
    return HostError(f"libvirt error on host {host}: {msg}", detail=msg)


def call(host, fn):
    """Run ``fn(conn)``; re-open once on a broken transport; map errors."""
    for attempt in (1, 2):
        conn = connection(host)
        try:
            return fn(conn)
        except libvirt.libvirtError as e:
            broken = e.get_error_domain() in (libvirt.VIR_FROM_REMOTE, libvirt.VIR_FROM_RPC)
            if broken and attempt == 1:
                _drop(_key(host))
                continue
            raise _map(e, host) from None
    raise AssertionError("unreachable")


# -- domains ---------------------------------------------------------------------------------------
@dataclass
class Disk:
    target: str
    path: str
    format: str
    readonly: bool = False
    size: int | None = None
    type: str = "file"  # libvirt's <disk type=...>: file, block, network, volume, ...
    backing: list[tuple[str, str]] = field(default_factory=list)  # (type, path) of a declared <backingStore>


@dataclass
class DomainInfo:
    name: str
    uuid: str
    state: str
    disks: list[Disk] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # why its disks cannot be copied (check_sources)

    @property
    def stopped(self) -> bool:
        return self.state == "shut off"


COPYABLE_FORMATS = ("raw", "qcow2")  # what the host's create-volume reads


def _source(kind: str, src) -> str:
    """Where a disk (or a backing store) of libvirt type ``kind`` reads from, as one string."""
    if src is None:
        return ""
    if kind == "network":
        hosts = ",".join(h.get("name", "") + (f":{h.get('port')}" if h.get("port") else "")
                         for h in src.findall("host"))
        return f"{src.get('protocol', '?')}://{hosts}/{src.get('name', '')}"
    if kind == "volume":
        return f"{src.get('pool', '?')}/{src.get('volume', '')}"
    return src.get("file") or src.get("dev") or src.get("dir") or ""


def parse_disks(xml: str) -> list[Disk]:
    """The domain's disks (not cdroms or floppies), in target order, whatever their type: a disk that
    cannot be copied is listed too, so check_sources can refuse it rather than the template miss it."""
    disks = []
    for d in ET.fromstring(xml).findall("./devices/disk"):
        if d.get("device", "disk") != "disk":
            continue
        kind = d.get("type", "file")
        src, tgt, drv = d.find("source"), d.find("target"), d.find("driver")
        path = _source(kind, src)
        if not path and kind == "file":
            continue  # no medium
        backing, store = [], d.find("backingStore")
        while store is not None and store.find("source") is not None:
            backing.append((store.get("type", "file"), _source(store.get("type", "file"), store.find("source"))))
            store = store.find("backingStore")
        disks.append(Disk(
            target=tgt.get("dev") if tgt is not None else "",
            path=path,
            format=(drv.get("type") if drv is not None else None) or "raw",
            readonly=d.find("readonly") is not None,
            type=kind,
            backing=backing,
        ))
    return disks


def declared_problems(disks: list[Disk]) -> list[str]:
    """What the domain XML alone says cannot be copied, naming each writable disk at fault: not a file
    (a block device, a network or pool volume disk), a format create-volume cannot read, a relative
    path, a declared backing store outside the VM's own disk files."""
    own = {d.path for d in disks if d.type == "file"}
    problems = []
    for d in disks:
        if d.readonly:
            continue  # not copied
        name = f"disk {d.target or '?'} ({d.path})"
        if d.type != "file":
            what = {"block": "a block device", "network": "a network disk", "volume": "a storage pool volume"}
            problems.append(f"{name} is {what.get(d.type, f'of type {d.type!r}')}: only disks in files can be copied")
            continue
        if not d.path.startswith("/"):
            problems.append(f"{name}: not an absolute path")
        elif d.format not in COPYABLE_FORMATS:
            problems.append(f"{name} is {d.format}: only {' and '.join(COPYABLE_FORMATS)} disks can be copied")
        for kind, path in d.backing:
            if kind != "file" or path not in own:
                problems.append(f"{name} has a backing store outside the VM's own disk files ({kind} {path})")
                break
    return problems


# One SSH round trip for the images of many disks: `qemu-img info` of each (format as declared; it does
# not open backing files, so a backing file elsewhere is named, never read), one line each, in order;
# a line starting with '!' is qemu-img's error.
_IMAGE_INFO = ('while [ $# -gt 1 ]; do '
               'if out=$(qemu-img info -U --output=json -f "$1" "$2" 2>&1); then printf "%s\\n" "$out" | tr -d "\\n"; '
               'else printf "!%s" "$out" | tr "\\n" " "; fi; echo; shift 2; done')


def check_sources(host, domains: list[DomainInfo]) -> None:
    """Fill each domain's ``problems``: its writable disks must be files vmseal can copy whole, whose
    images leave none of the VM's own files (a qcow2 backing file or external data file elsewhere
    would be flattened into the template). One SSH call for all the domains' images."""
    for info in domains:
        info.problems = declared_problems(info.disks)
    todo = [(info, d) for info in domains if not info.problems for d in info.disks if not d.readonly]
    if not todo:
        return
    args = [x for _, d in todo for x in (d.format, d.path)]
    out = transport.run(host, ["sh", "-c", _IMAGE_INFO, "vmseal-image-info", *args], timeout=60).stdout
    lines = out.splitlines()
    for i, (info, d) in enumerate(todo):
        line = lines[i] if i < len(lines) else "!no answer"
        name = f"disk {d.target or '?'} ({d.path})"
        if line.startswith("!"):
            info.problems.append(f"{name} cannot be read: {line[1:].strip()[:300]}")
            continue
        try:  # qemu-img's warnings, if any, come first
            image = json.loads(line[line.find("{"):])
        except ValueError:
            info.problems.append(f"{name}: qemu-img gave no readable answer")
            continue
        own = {x.path for x in info.disks if x.type == "file"}
        backing = image.get("full-backing-filename") or image.get("backing-filename")
        data_file = ((image.get("format-specific") or {}).get("data") or {}).get("data-file")
        if backing and backing not in own:
            info.problems.append(f"{name} has a backing file outside the VM's own disk files ({backing})")
        if data_file and data_file not in own:
            info.problems.append(f"{name} keeps its data in another file ({data_file})")


def domain_info(host, name: str) -> DomainInfo:
    def fn(conn):
        dom = conn.lookupByName(name)
        state, _reason = dom.state()
        return DomainInfo(
            name=dom.name(), uuid=dom.UUIDString(), state=STATE_NAMES.get(state, str(state)),
            disks=parse_disks(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)),
        )

    return call(host, fn)


def domain_xml(host, name: str) -> str:
    return call(host, lambda conn: conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))


def domain_state(host, name: str) -> str:
    def fn(conn):
        state, _reason = conn.lookupByName(name).state()
        return STATE_NAMES.get(state, str(state))

    return call(host, fn)


def define_domain(host, xml: str) -> str:
    """Define a persistent domain from ``xml`` (validated against libvirt's schema); its UUID."""
    flags = getattr(libvirt, "VIR_DOMAIN_DEFINE_VALIDATE", 0)
    return call(host, lambda conn: conn.defineXMLFlags(xml, flags).UUIDString())


def start_domain(host, name: str) -> None:
    call(host, lambda conn: conn.lookupByName(name).create())


def destroy_domain(host, name: str) -> None:
    def fn(conn):
        dom = conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()

    call(host, fn)


def undefine_domain(host, name: str) -> None:
    def fn(conn):
        dom = conn.lookupByName(name)
        try:
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        except libvirt.libvirtError:
            dom.undefine()

    call(host, fn)


def list_domains(host, *, stopped_only: bool = False) -> list[DomainInfo]:
    """The host's VMs with their disks; each disk's virtual size where libvirt can tell."""
    def fn(conn):
        out = []
        for dom in conn.listAllDomains():
            state, _ = dom.state()
            info = DomainInfo(dom.name(), dom.UUIDString(), STATE_NAMES.get(state, str(state)),
                              parse_disks(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
            if stopped_only and not info.stopped:
                continue
            for d in info.disks:
                if d.type != "file":
                    continue  # libvirt would have to reach a device or a server to tell: unknown
                try:
                    d.size = dom.blockInfo(d.target or d.path)[0]
                except libvirt.libvirtError:
                    d.size = None
            out.append(info)
        return sorted(out, key=lambda d: d.name)

    return call(host, fn)


# -- the template pool -----------------------------------------------------------------------------
def pool_name(path: str) -> str:
    """One libvirt pool per template directory: 'vmseal' for the default, 'vmseal-<hash>' otherwise."""
    import hashlib

    if path == "/var/lib/vmseal/templates":
        return "vmseal"
    return "vmseal-" + hashlib.sha256(path.encode()).hexdigest()[:8]


def ensure_pool(host) -> None:
    """The host's template pool: a libvirt ``dir`` pool at ``host.pool_path``, created on first use, mode
    0711 (libvirt's build sets it): searchable, so qemu (libvirt-qemu) reaches a thin VM's backing file,
    never listable; the template disks in it are root's 0400 files (the host helper's searchable_pool)."""
    from xml.sax.saxutils import escape

    def fn(conn):
        try:
            pool = conn.storagePoolLookupByName(pool_name(host.pool_path))
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            xml = (f"<pool type='dir'><name>{pool_name(host.pool_path)}</name><target><path>{escape(host.pool_path)}"
                   "</path><permissions><mode>0711</mode></permissions></target></pool>")
            pool = conn.storagePoolDefineXML(xml, 0)
            pool.build(0)
            pool.setAutostart(1)
        path = ET.fromstring(pool.XMLDesc(0)).findtext("./target/path")
        if path != host.pool_path:
            raise StorageError(f"host {host}: pool {pool_name(host.pool_path)!r} is at {path}, not {host.pool_path}")
        if not pool.isActive():
            pool.create(0)
        return True

    return call(host, fn)


def refresh_pool(host) -> None:
    call(host, lambda conn: conn.storagePoolLookupByName(pool_name(host.pool_path)).refresh(0))
