"""Fixtures of the integration tests beyond tests/conftest.py's."""

from __future__ import annotations

import pytest
import redis

from tests.webhook_support import DB


@pytest.fixture
def hooks_db(redis_server):
    """``(url, client)`` of a database of the test Redis of its own, empty: the
    webhook outbox's keys are global, so its tests must not meet each other's."""
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url, client
    client.flushdb()
    client.close()
