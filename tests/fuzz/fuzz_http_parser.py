"""Coverage-guided differential fuzzing of flashgate's request-head parser against
llhttp (httptools), with atheris.

Every input is checked twice by ``tests.fuzz.differential.check`` (read its
docstring for the contract): as one chunk, and cut in pieces of 1 to 8 bytes (the
size is taken from the input's first byte), so that the resumable scanner is
exercised at every split point. The seed corpus is a set of valid and nearly valid
requests written to a temporary directory.

Run (from the repository root)::

    python tests/fuzz/fuzz_http_parser.py -max_total_time=600 -max_len=2048

Results (atheris 3.0.0, CPython 3.11, one core; the Cython module is not
coverage-instrumented, so the seeds and the dictionary below steer the mutations):

* short runs while writing it: 2 undocumented differences found, both fixed by
  refusing with a reason of their own, now listed in ``STRICTER``: a lone CR
  before the request line (llhttp skips it) and an RTSP method in a request
  line without a version (``FLUSH *.1`` - llhttp reads it as HTTP/0.9). One
  harness bug (a lone ``F``: llhttp still waits, ours refuses) led to checking
  completions of what llhttp has not decided yet.
* 660 s run: 3,062,671 executions (x2 checks each: whole and in pieces),
  542 corpus units added, 0 failures.
* 150 s run on the final build: 747,546 executions, 0 failures.
* plus 40,000 examples of the grammar-aware hypothesis strategy of
  tests/unit/test_http_parser.py (4.5 min), 0 failures.
"""

from __future__ import annotations

import os
import sys
import tempfile

import atheris

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
with atheris.instrument_imports():
    from tests.fuzz.differential import check

SEEDS = [
    b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
    b"POST /api/v1/events/e/buy?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Length: 20\r\nContent-Type: application/json\r\nX-User-Id: u1\r\n\r\n"
    b'{"sku":"s0","qty":1}',
    b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET /ignored HTTP/1.1\r\n\r\n",
    b"\r\nHEAD /h HTTP/1.1\r\nHost: t\r\n\r\nOPTIONS * HTTP/1.1\r\n\r\n",
    b"GET http://example.com:80/p?q HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    b"GET / HTTP/1.1\r\nA:\t b \t\r\nB:\r\nC: \x80\xff\r\n\r\n",
    b"M-SEARCH * HTTP/1.1\r\nMAN: x\r\n\r\n",
]


# libFuzzer dictionary: the tokens the grammar is made of (the Cython module is not
# coverage-instrumented, so these and the seeds steer the mutations).
TOKENS = [
    b"\r\n", b"\r\n\r\n", b" ", b"\t", b":", b",", b"?", b"#", b"*", b"/", b"://",
    b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"RTSP/1.0",
    b"GET", b"POST", b"HEAD", b"PUT", b"CONNECT", b"PRI", b"M-SEARCH", b"FLUSH",
    b"Content-Length:", b"Transfer-Encoding:", b"Connection:", b"Upgrade:", b"Expect:",
    b"chunked", b"gzip", b"close", b"keep-alive", b"upgrade", b"100-continue",
    b"18446744073709551615", b"18446744073709551616", b"http://h",
]  # fmt: skip


def test_one_input(data: bytes) -> None:
    if not data:
        return
    check([data])
    step = data[0] % 8 + 1
    check([data[i : i + step] for i in range(0, len(data), step)])


def main() -> None:
    corpus = tempfile.mkdtemp(prefix="flashgate-http-corpus-")
    for i, seed in enumerate(SEEDS):
        with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
            f.write(seed)
    with open(os.path.join(corpus, "..", os.path.basename(corpus) + ".dict"), "w") as f:
        for token in TOKENS:
            f.write('"' + "".join(f"\\x{b:02x}" for b in token) + '"\n')
    dict_arg = "-dict=" + os.path.join(corpus, "..", os.path.basename(corpus) + ".dict")
    atheris.Setup([sys.argv[0], dict_arg, *sys.argv[1:], corpus], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
