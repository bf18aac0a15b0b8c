"""Every test of test_http_protocol.py, run against the compiled HttpProtocol
(flashgate.gateway._protocol) instead of the pure-Python one."""

from __future__ import annotations

import pytest

from flashgate.gateway import _protocol, protocol
from tests.unit import test_http_protocol as base

# The base module's tests and fixtures, collected here too. They look
# HttpProtocol up in the base module's globals at call time, so patching that
# name (below) is what switches them to the compiled class.
globals().update(
    {
        name: obj
        for name, obj in vars(base).items()
        if name.startswith("test_") or getattr(obj, "_fixture_function_marker", None)
    }
)
serve = base.serve


@pytest.fixture(autouse=True, scope="module")
def _compiled_protocol():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(protocol, "HttpProtocol", _protocol.HttpProtocol)
        mp.setattr(base, "HttpProtocol", _protocol.HttpProtocol)
        yield


def test_the_compiled_class_is_the_one_under_test():
    async def main():
        proto, _, registry = base.make_protocol()
        assert type(proto) is _protocol.HttpProtocol
        assert isinstance(proto, _protocol.HttpProtocolCore)
        assert isinstance(proto, protocol.asyncio.Protocol)
        assert proto in registry._conns

    base.run(main())
