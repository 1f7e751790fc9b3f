"""vmseal's own exceptions for everything that crosses to a host. libvirt, ssh and host-helper
failures are mapped to these; nothing above this layer sees a libvirtError or an ssh exit code."""


class VmsealError(Exception):
    """Base class. ``code`` is stable and machine-readable; str() is for humans."""

    code = "error"

    def __init__(self, message: str, *, detail: str = ""):
        super().__init__(message)
        self.message = message
        self.detail = detail


class HostError(VmsealError):
    code = "host_error"


class HostUnreachable(HostError):
    code = "host_unreachable"


class HostKeyMismatch(HostError):
    code = "host_key_mismatch"


class HostCommandFailed(HostError):
    code = "host_command_failed"

    def __init__(self, message: str, *, detail: str = "", exit_code: int | None = None):
        super().__init__(message, detail=detail)
        self.exit_code = exit_code


class DomainNotFound(HostError):
    code = "vm_not_found"


class DomainNotStopped(HostError):
    code = "vm_not_stopped"


class StorageError(HostError):
    code = "storage_error"


class VolumeRefused(HostError):
    """The host refused a volume change by vdsm's update_volume rules (stale generation, no-op,
    illegal type change, SHARED volume)."""

    code = "volume_refused"


class InvalidTransition(VmsealError):
    code = "invalid_transition"


class HostInUse(VmsealError):
    """A change or deletion refused because the host still holds something (volumes, templates, jobs):
    a conflict with the stored state (409), not an invalid value. ``field`` names the field refused."""

    code = "host_in_use"

    def __init__(self, message: str, *, field: str = "", detail: str = ""):
        super().__init__(message, detail=detail)
        self.field = field


class NotCancellable(InvalidTransition):
    """A job that runs to its end once started: a delete (stopped half way, it would leave a template
    with some of its volumes deleted)."""

    code = "not_cancellable"
