"""The HTTP/1.1 connection, compiled (type stub of the Cython module).

The theory of operation (rules 1-9) is the docstring of ``flashgate.gateway.protocol``,
which also exports ``HttpProtocol`` and ``Stream``.
"""

import asyncio
from collections.abc import Callable, Generator
from typing import Any, Literal, final

from flashgate.gateway.protocol import ConnectionRegistry, HttpLimits

__all__ = [
    "ConnectionRegistry", "HttpLimits", "HttpProtocol", "HttpProtocolCore", "Pending", "Stream",
    "on_refused",
]

StreamEnd = Literal["closed", "overflow", "disconnect", "shutdown"]

@final
class Pending:
    """An answer the app gives later: ``set_result(bytes)`` once. The purchase path's
    light stand-in for an ``asyncio.Future``: the connection that owes it is told at
    once, in the call (no loop callback per answer); ``done()`` / ``result()`` as a
    Future's, and ``await pending`` works too (for app coroutines)."""

    def done(self) -> bool: ...
    def result(self) -> bytes:
        """The answer; ``asyncio.InvalidStateError`` before it is given."""
    def set_result(self, value: bytes | bytearray | memoryview) -> None:
        """Give the answer (anything but bytes is logged and answered 500);
        ``asyncio.InvalidStateError`` the second time."""
    def then(self, callback: Callable[[bytes], object]) -> None:
        """Call ``callback(answer)`` once the answer is given (at once if it is; one
        callback per Pending, a second replaces the first; exceptions are logged)."""
    def __await__(self) -> Generator[Any, None, bytes]: ...

@final
class Stream:
    """A response written frame by frame (rule 9 of ``protocol``): an app returns it
    from ``handle(request)`` like any answer, then ``send``s frames and ``close``s it.

    ``head``: the status line and header fields ending with the empty line, with no
    Content-Length, Transfer-Encoding or Connection field (``build_stream_head``
    makes one); ValueError otherwise, or for a status that has no body (1xx, 204,
    304). The connection frames what follows: chunks for HTTP/1.1 (the connection
    carries on with the next request once the stream ends), the connection's close
    for HTTP/1.0 (``Connection: close``). A HEAD request gets the head alone and the
    stream ends at once ("closed").

    ``max_buffer`` bounds the bytes the stream has queued and not yet handed to the
    kernel: its own buffer while it waits behind earlier answers, then the
    transport's write buffer while it writes. A frame that would pass it drops the
    subscriber: the connection is aborted and the stream ends with "overflow".

    ``on_close(stream, reason)`` is called exactly once, synchronously, in the call
    that ends the stream (``close``, ``send``, the request's dispatch for HEAD, or the
    connection's callback), with ``reason``: "closed" (``close()``, or HEAD),
    "overflow", "disconnect" (the connection was lost, or it never began), or
    "shutdown" (``ConnectionRegistry.close_idle``: a graceful drain). Exceptions it
    raises are logged. Iterate over a copy of any set it edits.

    A Stream answers one request only (returned twice, the second answer is a 500).
    """

    max_buffer: int
    def __init__(
        self,
        head: bytes,
        max_buffer: int = 262144,
        on_close: Callable[[Stream, StreamEnd], object] | None = None,
    ) -> None: ...
    @property
    def closed(self) -> bool:
        """True once the stream has ended; ``send`` refuses frames from then on."""
    @property
    def reason(self) -> StreamEnd | None:
        """Why the stream ended, or None while it is open."""
    @property
    def buffered(self) -> int:
        """Payload bytes held until the stream reaches the head of its connection's
        answers (then written, and 0)."""
    @property
    def status(self) -> int:
        """The status code of its head."""
    @property
    def head_size(self) -> int:
        """The size of its head as the app gave it."""
    def send(self, data: bytes | bytearray | memoryview) -> bool:
        """Queue one frame: True, or False with nothing queued once the stream has
        ended, or when this frame would pass ``max_buffer`` (it then ends with
        "overflow"). An empty frame is a no-op (True). Never blocks or awaits; costs
        one copy of the frame. TypeError for anything but bytes-like data."""
    def close(self) -> None:
        """End the stream normally ("closed"): what it queued is still written, then
        the last chunk, or the connection's close (HTTP/1.0). Idempotent."""

def on_refused(hook: Callable[[str, int, int], object] | None) -> None:
    """Call ``hook(peer_ip, status, size)`` for every answer a connection gives a
    request the app never saw (400 malformed, 408, 413, a refusal from its head);
    None: no call (the default)."""

class HttpProtocolCore:
    """The state machine of ``HttpProtocol``; use ``HttpProtocol``."""

    def __init__(self, app: Any, limits: HttpLimits, registry: ConnectionRegistry) -> None:
        """``app.handle(request)`` returns bytes, a ``Pending``, a ``Stream`` or an
        awaitable of bytes or of a ``Stream``."""
    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def connection_lost(self, exc: BaseException | None) -> None: ...
    def eof_received(self) -> bool | None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...
    def data_received(self, data: bytes) -> None: ...

class HttpProtocol(HttpProtocolCore, asyncio.Protocol):
    """HTTP/1.1 server side of one connection. Factory:
    ``lambda: HttpProtocol(app, limits, registry)``."""
