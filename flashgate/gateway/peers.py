"""The workers of one instance tell each other that the definitions changed.

A change of a definition (PUT, pause, resume) must reach every worker of the
instance before the operator's 2xx: the worker that served it reloads, then sends
``reload <version> <request>`` to each other worker and waits until each answers
``loaded <request> <version>`` (it has loaded that version or a later one). A worker
that is not running (being restarted) cannot be told and need not be: a worker binds
its address before it loads the definitions at start, so it either loads the new
version then or hears of it.

Transport: a unix datagram socket per worker, ``<dir>/w<worker>``, in a directory the
supervisor makes for the instance (mode 0700, removed when it stops): no other user
can reach a worker's address, or take it before the worker binds it. Every datagram's
sender is checked too (``SO_PASSCRED``): only a process of this user is heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct

log = logging.getLogger("flashgate.peers")

_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def address(directory: str, worker_id: int) -> str:
    return os.path.join(directory, f"w{worker_id}")


class Peers:
    """``announce(version)``: every other running worker has loaded ``version``."""

    def __init__(self, directory: str, worker_id: int, workers: int, reload, current, *,
                 timeout: float = 5.0):
        self.directory = directory
        self.worker_id = worker_id
        self.workers = workers
        self.reload = reload  # async () -> the version loaded
        self.current = current  # () -> the version this worker has loaded
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seq = 0
        self._waiting: dict[int, tuple[set[int], int, asyncio.Future]] = {}
        self._uid = os.getuid()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind this worker's address (before the first load of the definitions)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        path = address(self.directory, self.worker_id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by this worker's predecessor (killed, then restarted)
        sock.bind(path)
        sock.setblocking(False)
        self._sock = sock
        self._loop = loop
        loop.add_reader(sock.fileno(), self._readable)

    def close(self) -> None:
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for _, _, fut in self._waiting.values():
            if not fut.done():
                fut.set_result(False)
        self._waiting.clear()

    async def announce(self, version: int) -> bool:
        """Tell the other workers to load ``version``; True once every one that could
        be told has, False if one did not answer within the timeout."""
        if self._sock is None:
            return True
        self._seq += 1
        rid = self._seq
        msg = f"reload {version} {rid}".encode()
        told = set()
        for wid in range(self.workers):
            if wid == self.worker_id:
                continue
            try:
                self._sock.sendto(msg, address(self.directory, wid))
                told.add(wid)
            except (ConnectionRefusedError, FileNotFoundError):
                pass  # not running: it loads the definitions when it starts
            except OSError as e:
                log.warning("cannot tell worker %d of version %d: %s", wid, version, e)
                return False
        if not told:
            return True
        fut = self._loop.create_future()
        self._waiting[rid] = (told, version, fut)
        try:
            return await asyncio.wait_for(fut, self.timeout)
        except TimeoutError:
            left, _, _ = self._waiting.get(rid, (set(), 0, None))
            log.warning("workers %s did not load version %d within %.0f s",
                        sorted(left), version, self.timeout)
            return False
        finally:
            self._waiting.pop(rid, None)

    def _readable(self) -> None:
        while self._sock is not None:
            try:
                data, anc, _flags, sender = self._sock.recvmsg(
                    256, socket.CMSG_SPACE(_CREDS.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("peer channel: %s", e)
                return
            uid = None
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    _pid, uid, _gid = _CREDS.unpack(value[:_CREDS.size])
            if uid != self._uid:
                continue  # not one of ours
            try:
                self._message(data.decode("ascii").split(), sender)
            except (ValueError, IndexError, UnicodeDecodeError):
                log.warning("peer channel: a malformed message %.64r", data)

    def _message(self, parts: list[str], sender) -> None:
        if parts[0] == "reload":
            version, rid = int(parts[1]), int(parts[2])
            self._loop.create_task(self._reload(version, rid, sender))
        elif parts[0] == "loaded":
            rid, version = int(parts[1]), int(parts[2])
            entry = self._waiting.get(rid)
            if entry is None:
                return
            told, want, fut = entry
            wid = _worker_of(sender, self.directory)
            if wid is not None and version >= want:
                told.discard(wid)
            if not told and not fut.done():
                fut.set_result(True)

    async def _reload(self, version: int, rid: int, sender) -> None:
        try:
            loaded = self.current()
            if loaded < version:
                loaded = await self.reload()
        except Exception as e:  # Redis away: the sender times out and says so
            log.warning("cannot reload the definitions for a peer: %s", e)
            return
        if self._sock is None or not sender:
            return
        try:
            self._sock.sendto(f"loaded {rid} {loaded}".encode(), sender)
        except OSError as e:
            log.warning("cannot answer worker %r: %s", sender, e)


def _worker_of(sender, directory: str) -> int | None:
    if isinstance(sender, bytes):
        sender = sender.decode("utf-8", "replace")
    if not isinstance(sender, str) or os.path.dirname(sender) != directory:
        return None
    name = os.path.basename(sender)
    try:
        return int(name[1:]) if name.startswith("w") else None
    except ValueError:
        return None
