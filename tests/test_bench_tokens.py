"""The bench's pre-signed buyer tokens are the tokens flashgate accepts."""

import time

import pytest

from bench.tokens import Signer
from flashgate.auth import sign
from flashgate.gateway._token import TokenKey


@pytest.mark.parametrize("secret", [b"s3cret", b"k" * 64, b"a much longer secret " * 5])
def test_tokens_are_flashgates(secret):
    expires = int(time.time() * 1000) + 3_600_000
    signer = Signer(secret, expires)
    verifier = TokenKey(secret)
    for user in ("u1", "c123456789", "early-bird"):
        token = signer.token(user)
        assert token == sign(secret, user, expires)
        assert verifier.user(b"Bearer " + token.encode(), expires - 1) == user
    other = TokenKey(secret + b"x")
    assert other.user(b"Bearer " + signer.token("u1").encode(), expires - 1) is None


def test_pool_file_lines_follow_the_numbering(tmp_path):
    secret, expires = b"s3cret", 1_900_000_000_000
    signer = Signer(secret, expires)
    path = tmp_path / "pool"
    signer.write(path, "c", 65_530, 70_000)  # crosses a write chunk
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 70_001
    for i in (0, 5, 6, 69_999):
        assert lines[i].decode() == sign(secret, f"c{65_530 + i}", expires)
