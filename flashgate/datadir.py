"""The data directory of ``flashgate serve``: one server per directory, and the
generated admin token.

A server locks its directory (``flock`` on ``DATA_DIR/lock``, which then holds its
pid) before it starts the embedded Redis or writes anything there, and holds the
lock for its whole life; the embedded redis-server inherits the lock's descriptor, so
the directory stays locked while that server lives even if the supervisor was killed.
A second server on a locked directory is refused (``DataDirBusy``) and touches
nothing: two embedded Redis servers on the same files would each sell the same stock.

The directory is 0700 and its files 0600. The generated admin token is written
atomically (exclusive create of a temporary file, write, fsync, rename, fsync of the
directory); a token file found there is used only if it belongs to this user, no one
else may read it, and it holds a token.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
from pathlib import Path

from flashgate.config import MIN_ADMIN_TOKEN_CHARS


class DataDirError(Exception):
    """The data directory cannot be used; ``flashgate serve`` says why and exits 2."""


class DataDirBusy(DataDirError):
    """Another server holds the directory's lock."""


class DataDirLock:
    """The held lock of a data directory: ``fd`` (to pass to children that must keep
    the directory locked), ``release()``."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = -1


def lock(data_dir: str | os.PathLike) -> DataDirLock:
    """Create ``data_dir`` (mode 0700) if needed and lock it; DataDirBusy when
    another server holds it, DataDirError when it cannot be used."""
    d = Path(data_dir).absolute()
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = d.stat()
        if st.st_uid != os.geteuid():
            raise DataDirError(f"the data directory {d} belongs to uid {st.st_uid}, not to "
                               f"this user (uid {os.geteuid()})")
        fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise DataDirError(f"cannot use the data directory {d}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        who = f"pid {holder}" if holder.isdigit() else "a process whose pid is not known yet"
        raise DataDirBusy(
            f"the data directory {d} is in use by another flashgate server ({who}): "
            "one data directory serves one server; stop that one, or give this one its "
            "own --data-dir (and, to share the sale, the same --redis)") from None
    except OSError as e:
        os.close(fd)
        raise DataDirError(f"cannot lock the data directory {d}: {e.strerror or e}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    held = DataDirLock(d, fd)
    try:
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(d, 0o700)
        os.fchmod(fd, 0o600)
    except OSError as e:
        held.release()
        raise DataDirError(f"cannot use the data directory {d}: {e.strerror or e}") from None
    return held


def _check_token_file(path: Path, fd: int) -> str:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise DataDirError(f"{path} is not a regular file")
    if st.st_uid != os.geteuid():
        raise DataDirError(f"the admin token file {path} belongs to uid {st.st_uid}, not to "
                           f"this user (uid {os.geteuid()}): remove it to have a new one "
                           "generated, or give --admin-token-file")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise DataDirError(f"the admin token file {path} may be read by other users (mode "
                           f"{stat.S_IMODE(st.st_mode):04o}): the token may be known; remove "
                           "the file to have a new one generated (or chmod 600 it)")
    raw = os.read(fd, 4096)
    try:
        token = raw.decode().strip()
    except UnicodeDecodeError:
        token = ""
    if not token:
        raise DataDirError(f"the admin token file {path} is empty or not text: remove it to "
                           "have a new one generated")
    if len(token) < MIN_ADMIN_TOKEN_CHARS:
        raise DataDirError(f"the admin token in {path} is too short ({len(token)} characters, "
                           f"at least {MIN_ADMIN_TOKEN_CHARS} are needed): remove the file to "
                           "have a new one generated")
    return token


def admin_token(data_dir: str | os.PathLike) -> tuple[str, Path]:
    """The admin token kept in ``data_dir/admin_token`` (generated there if missing)
    and the file's path. Call with the directory locked."""
    d = Path(data_dir).absolute()
    path = d / "admin_token"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise DataDirError(f"cannot read the admin token file {path}: {e.strerror or e}") from None
    else:
        try:
            return _check_token_file(path, fd), path
        finally:
            os.close(fd)
    token = secrets.token_urlsafe(24)
    for stale in d.glob(".admin_token.*.tmp"):  # from a crash mid-write (the dir is locked)
        with contextlib.suppress(OSError):
            stale.unlink()
    tmp = d / f".admin_token.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, (token + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise DataDirError(f"cannot write the admin token file {path}: {e.strerror or e}") from None
    return token, path
