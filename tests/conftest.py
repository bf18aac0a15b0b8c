"""Fixtures: a private redis-server on a free port, and gateways started against it."""

from __future__ import annotations

import pytest
import redis

from flashgate.embedded import EmbeddedRedis
from tests.support import Gateway


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def r(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def gw(redis_server, tmp_path_factory):
    """The shared gateway: 2 workers, dev mode (X-User-Id), limiters off."""
    g = Gateway(redis_server.url, tmp_path_factory.mktemp("gw")).start()
    yield g
    g.stop()
