"""The one way the app reaches a host: its port.

Everything the flows, the runner and the host scans ask of a hypervisor host goes through
``for_host(host)``, a HostPort with two kinds of calls:

    helper(args)          one verb of vmseal's helper on the host (``hooks/vmseal_host.py``), its
                          arguments built by ``hostjobs.hostops``; returns the verb's JSON answer
    domain_info, check_sources, ensure_pool, refresh_pool, list_domains, domain_xml, domain_state
                          libvirt's view of the host (``hostjobs.virt``)
    define_domain, start_domain, destroy_domain, undefine_domain
                          libvirt's changes to a VM's domain (the VM flow's, in the worker only)

The real port (SSHPort) runs the helper over the host's pinned SSH connection (``hostops.helper``) and
libvirt over ``qemu+ssh`` (``hostjobs.virt``). Both raise vmseal's own errors (HostUnreachable,
VolumeRefused, HostCommandFailed, ...), and so must any other port: a caller decides on those alone.
``use(factory)`` puts another port in place for a block (tests/utils/fakehost.py, an in-process fake
of the helper's protocol, for the flow's unit tests).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

from hostjobs import hostops, virt


class HostPort:
    """What the app asks of one host. Subclasses implement every method."""

    def __init__(self, host):
        self.host = host

    def helper(self, args: Sequence[str], *, timeout: float = 600, input: bytes | None = None) -> dict:
        """Run one helper verb (``args`` from a ``hostops`` builder); its JSON answer. Raises
        VolumeRefused when the host refused (``detail``: the helper's code), HostCommandFailed on
        another failure, HostUnreachable when the host could not be asked."""
        raise NotImplementedError

    def domain_info(self, name: str) -> virt.DomainInfo:
        raise NotImplementedError

    def check_sources(self, domains: list[virt.DomainInfo]) -> None:
        """Fill each domain's ``problems`` (see ``virt.check_sources``)."""
        raise NotImplementedError

    def list_domains(self, *, stopped_only: bool = False) -> list[virt.DomainInfo]:
        raise NotImplementedError

    def ensure_pool(self) -> None:
        raise NotImplementedError

    def domain_xml(self, name: str) -> str:
        """The domain's inactive (persistent) definition."""
        raise NotImplementedError

    def domain_state(self, name: str) -> str:
        """Its state as ``virt.STATE_NAMES`` says ("running", "shut off", ...); DomainNotFound if none."""
        raise NotImplementedError

    def define_domain(self, xml: str) -> str:
        """Define a persistent domain; its UUID."""
        raise NotImplementedError

    def start_domain(self, name: str) -> None:
        raise NotImplementedError

    def destroy_domain(self, name: str) -> None:
        """Power it off at once (a running domain); a domain not running is left as it is."""
        raise NotImplementedError

    def undefine_domain(self, name: str) -> None:
        """Remove its definition (with its NVRAM); DomainNotFound if none."""
        raise NotImplementedError

    def refresh_pool(self) -> None:
        raise NotImplementedError


class SSHPort(HostPort):
    """A real host: the helper over SSH, libvirt over qemu+ssh."""

    def helper(self, args, *, timeout=600, input=None):
        return hostops.helper(self.host, args, timeout=timeout, input=input)

    def domain_info(self, name):
        return virt.domain_info(self.host, name)

    def check_sources(self, domains):
        virt.check_sources(self.host, domains)

    def list_domains(self, *, stopped_only=False):
        return virt.list_domains(self.host, stopped_only=stopped_only)

    def ensure_pool(self):
        virt.ensure_pool(self.host)

    def domain_xml(self, name):
        return virt.domain_xml(self.host, name)

    def domain_state(self, name):
        return virt.domain_state(self.host, name)

    def define_domain(self, xml):
        return virt.define_domain(self.host, xml)

    def start_domain(self, name):
        virt.start_domain(self.host, name)

    def destroy_domain(self, name):
        virt.destroy_domain(self.host, name)

    def undefine_domain(self, name):
        virt.undefine_domain(self.host, name)

    def refresh_pool(self):
        virt.refresh_pool(self.host)


_factory: Callable[[object], HostPort] = SSHPort


def for_host(host) -> HostPort:
    """The port to ``host``."""
    return _factory(host)


@contextlib.contextmanager
def use(factory: Callable[[object], HostPort]) -> Iterator[None]:
    """Reach every host through ``factory(host)`` inside the block (tests)."""
    global _factory
    before, _factory = _factory, factory
    try:
        yield
    finally:
        _factory = before
