"""Sans-IO HTTP/1.1 request-head parser (type stub of the Cython module).

See the theory of operation (grammar, states, invariants) at the top of ``_http.pyx``.
"""

from typing import Final, final

NEED_DATA: Final[int]
"""``next_head()``: no complete head buffered yet."""
HEAD: Final[int]
"""``next_head()``: a head was consumed; its parts are the parser's attributes."""

E_MALFORMED: Final[int]
"""Any syntax error (``reason`` says which); the protocol answers 400."""
E_URI_TOO_LONG: Final[int]
"""The request-target is longer than ``max_request_line`` (414)."""
E_HEAD_TOO_LARGE: Final[int]
"""The head is not complete within ``max_head`` bytes (431)."""
E_TOO_MANY_HEADERS: Final[int]
"""More than ``max_headers`` field lines (431)."""
E_VERSION: Final[int]
"""HTTP/0.9 or HTTP/2.0 in the request line (505)."""
E_CONNECT: Final[int]
"""A CONNECT request (400)."""
E_UPGRADE: Final[int]
"""``Upgrade`` with ``Connection: upgrade`` (400)."""
E_CHUNKED: Final[int]
"""``Transfer-Encoding: chunked`` (411)."""
E_TRANSFER_ENCODING: Final[int]
"""Any other Transfer-Encoding, or more than one (400)."""

F_CONNECTION: Final[int]
"""``flags``: a Connection header is present."""
F_CONTENT_LENGTH: Final[int]
"""``flags``: a Content-Length header is present."""
F_NOT_ORIGIN: Final[int]
"""``flags``: the target is ``*`` or in absolute-form (``path`` is None)."""
F_HTTP10: Final[int]
"""``flags``: HTTP/1.0."""

_METHODS: tuple[bytes, ...]
"""The accepted methods; ``method`` is always one of these very objects."""

@final
class RequestParser:
    """Incremental, strict request-head parser over a byte buffer it owns.

    ``feed()`` what the socket gives, then call ``next_head()`` (or ``pop_head()``)
    until it stops returning a head; after a head with ``content_length > 0``,
    ``take(content_length)`` returns the body once it is all buffered. Heads split
    across any number of chunks and pipelined heads are both fine; a head fed one
    byte at a time costs linear time. Chunked bodies are not parsed (refused with
    ``E_CHUNKED``). After an error the parser stays failed.

    Raises ``ValueError`` for a limit below 1 (``max_headers`` may be 0).
    """

    max_head: int
    max_request_line: int
    max_headers: int

    method: bytes
    path: str | None
    """Latin-1 decoded, not percent-decoded, without the query; None if not origin-form."""
    query: bytes
    """After the first ``?``, raw; ``b""`` if none (or not origin-form)."""
    headers: dict[bytes, bytes]
    """Lower-case name -> value (leading whitespace dropped, trailing kept); last wins."""
    version: int
    """10 or 11."""
    content_length: int
    """-1 without Content-Length; values above 2**63 - 1 read as 2**63 - 1."""
    keep_alive: bool
    """llhttp's rule: HTTP/1.1 unless ``Connection: close``; HTTP/1.0 only with keep-alive."""
    flags: int
    error: int
    """The error code once ``next_head()`` failed, else 0."""
    reason: str
    """What was wrong (llhttp's wording where llhttp has one)."""

    def __init__(
        self, max_head: int = 16384, max_request_line: int = 8192, max_headers: int = 100
    ) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the buffer (no copy when nothing else is buffered)."""
    @property
    def buffered(self) -> int:
        """Bytes fed and not consumed yet."""
    @property
    def started(self) -> bool:
        """True while a head is in progress (begun, not complete, not failed)."""
    @property
    def target(self) -> bytes:
        """The raw request-target of the last head."""
    def next_head(self) -> int:
        """``HEAD``, ``NEED_DATA`` or an error code (< 0)."""
    def pop_head(
        self,
    ) -> tuple[bytes, str | None, bytes, dict[bytes, bytes], bool, int, int] | None:
        """``(method, path, query, headers, keep_alive, flags, content_length)`` of the
        next head, or None (``error`` tells a failure from a need for data)."""
    def take(self, n: int) -> bytes | None:
        """Consume the next ``n`` bytes, or None while fewer are buffered."""

class Request:
    """One parsed request, as handed to ``app.handle``."""

    method: bytes
    path: str
    query: bytes
    headers: dict[bytes, bytes]
    body: bytes
    keep_alive: bool
    peer_ip: str
    peer: object
    def __init__(self, method: bytes = b"GET", path: str = "/", query: bytes = b"",
                 headers: dict[bytes, bytes] | None = None, body: bytes = b"",
                 keep_alive: bool = True, peer_ip: str = "", peer: object = None) -> None: ...
    def header(self, name: bytes, default: object = None) -> object:
        """Value of header ``name`` (lower-case bytes), or ``default``."""
