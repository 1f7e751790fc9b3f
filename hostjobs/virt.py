"""libvirt over ``qemu+ssh``, opened lazily, one connection per host per process.

Follows nova's ``host.py``: the default event loop is registered before the first ``open()`` and
runs forever in one daemon thread (keepalive and close callbacks need it); a connection whose
transport broke (VIR_FROM_REMOTE / VIR_FROM_RPC) is dropped and re-opened once. Every libvirtError
leaves this module as one of vmseal's own exceptions.
"""

from __future__ import annotations

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
    if dom in (libvirt.VIR_FROM_REMOTE, libvirt.VIR_FROM_RPC) or code == libvirt.VIR_ERR_SYSTEM_ERROR:
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


@dataclass
class DomainInfo:
    name: str
    uuid: str
    state: str
    disks: list[Disk] = field(default_factory=list)

    @property
    def stopped(self) -> bool:
        return self.state == "shut off"


def parse_disks(xml: str) -> list[Disk]:
    """The domain's writable file/block disks (not cdroms), in target order."""
    disks = []
    for d in ET.fromstring(xml).findall("./devices/disk"):
        if d.get("device", "disk") != "disk":
            continue
        src, tgt, drv = d.find("source"), d.find("target"), d.find("driver")
        path = None if src is None else (src.get("file") or src.get("dev"))
        if not path:
            continue
        disks.append(Disk(
            target=tgt.get("dev") if tgt is not None else "",
            path=path,
            format=(drv.get("type") if drv is not None else None) or "raw",
            readonly=d.find("readonly") is not None,
        ))
    return disks


def domain_info(host, name: str) -> DomainInfo:
    def fn(conn):
        dom = conn.lookupByName(name)
        state, _reason = dom.state()
        return DomainInfo(
            name=dom.name(), uuid=dom.UUIDString(), state=STATE_NAMES.get(state, str(state)),
            disks=parse_disks(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)),
        )

    return call(host, fn)


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
                try:
                    d.size = dom.blockInfo(d.path)[0]
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
    0700 (libvirt's build sets it): template disks are root's alone."""
    from xml.sax.saxutils import escape

    def fn(conn):
        try:
            pool = conn.storagePoolLookupByName(pool_name(host.pool_path))
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            xml = (f"<pool type='dir'><name>{pool_name(host.pool_path)}</name><target><path>{escape(host.pool_path)}"
                   "</path><permissions><mode>0700</mode></permissions></target></pool>")
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
