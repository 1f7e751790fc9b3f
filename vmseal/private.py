"""Directories and files private to the user vmseal runs as (0700 / 0600), whatever the umask.

The data directory holds the database (tokens, sessions, callback secrets), the secret key, the app's
SSH key, per-host SSH files and the SSH control sockets: nobody else may read them, and nobody else may
have made, or be able to change, a directory vmseal keeps them in. A directory of ours with wider
modes (an older vmseal's, a ``mkdir`` under umask 022) is narrowed to 0700; one that belongs to another
user, is writable by group or others, or is not a directory (a symlink) is refused, never changed.

Stdlib and Django's exceptions only: settings.py uses it before Django is set up.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured


class NotPrivate(ImproperlyConfigured):
    """A directory vmseal would keep secrets in is not its own: refused."""


def private_dir(path: str | os.PathLike, *, parents: bool = False) -> Path:
    """Make ``path`` a directory only this user can use (0700), or refuse one that is not ours."""
    path = Path(path)
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)  # not ours to keep private (e.g. /var/lib)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:  # ELOOP: a symlink; ENOTDIR: a file
        raise NotPrivate(f"{path} is not a directory of vmseal's own ({e.strerror}): refusing to use it") from None
    try:
        st = os.fstat(fd)
        me = os.geteuid()
        if st.st_uid != me:
            raise NotPrivate(f"{path} belongs to uid {st.st_uid}, not to uid {me} that vmseal runs as: refusing to "
                             "use it (remove it, or make it vmseal's own and mode 0700)")
        if st.st_mode & 0o022:
            raise NotPrivate(f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): refusing "
                             "to use it (remove it, or make it mode 0700)")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)  # ours: narrowed (an older vmseal's 0755) or completed (a umask like 0o777)
        _narrow_files(path, me)
    finally:
        os.close(fd)
    return path


def _narrow_files(path: Path, me: int) -> None:
    """Files of ours directly in ``path`` that an older vmseal made readable by others (its database,
    logs) are narrowed to their owner's bits; links and other users' files are left alone."""
    with os.scandir(path) as entries:
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_uid == me and st.st_mode & 0o077:
                os.chmod(e.path, stat.S_IMODE(st.st_mode) & 0o700)


def create_private_file(path: str | os.PathLike) -> bool:
    """Create ``path`` empty and 0600 if it does not exist (never following a symlink); True if made."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def write_private(path: str | os.PathLike, content: str, mode: int = 0o600) -> None:
    """Replace ``path`` atomically with ``content``; the file is created with ``mode``, never wider."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        os.unlink(tmp)  # a crashed writer's leftover
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # exactly: a umask can only have narrowed it (0o177 would drop the wrapper's x)
        with os.fdopen(fd, "w", closefd=False) as f:
            f.write(content)
    finally:
        os.close(fd)
    os.replace(tmp, path)
