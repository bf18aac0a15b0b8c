"""Fixtures: a private redis-server on a free port, and gateways started against it in
either identity mode (tests/support.py: ``dev`` and ``prod``).

Checks of every test, whatever it asks for:

* every gateway (support.Gateway) the test started is stopped with SIGTERM when it
  ends and must exit 0, and no gateway's log may hold an ERROR or CRITICAL line or a
  traceback but those the test expects: ``@pytest.mark.expected_log(regex, ...)``;
  the lines a shared gateway (module or session fixture) wrote during a test are
  checked when that test ends, its exit code when the fixture stops it;
* with ``CI=true``, a test marked ``ci_required`` that is skipped (a missing tool:
  wrk, nginx, faketime, atheris, openssl, a TLS-capable redis-server...) fails;
* with ``FLASHGATE_EXPECT_DEBUG=1`` (the debug pass of .ci/run) the session refuses to
  run unless the loaded ledger is the debug build (``_stock.DEBUG``); with ``=0``,
  unless it is the normal build.
"""

from __future__ import annotations

import os

import pytest
import redis

from flashgate.embedded import EmbeddedRedis
from tests.support import MODES, Gateway


def pytest_sessionstart(session):
    """FLASHGATE_EXPECT_DEBUG=1 (0): the loaded ledger must be the debug (normal) build."""
    from flashgate.core import _stock

    expect = os.environ.get("FLASHGATE_EXPECT_DEBUG")
    if expect not in (None, "0", "1"):
        pytest.exit(f"FLASHGATE_EXPECT_DEBUG={expect!r}: 0 or 1", returncode=4)
    if expect is not None and _stock.DEBUG is not (expect == "1"):
        built = "debug" if _stock.DEBUG else "normal"
        wanted = "debug" if expect == "1" else "normal"
        pytest.exit(f"{_stock.__file__} is the {built} build; FLASHGATE_EXPECT_DEBUG={expect} "
                    f"asks for the {wanted} one", returncode=3)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and os.environ.get("CI") == "true" and not hasattr(report, "wasxfail")
            and item.get_closest_marker("ci_required") is not None):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"a required check was skipped with CI=true: {reason}"


@pytest.fixture(autouse=True)
def _gateways_checked(request):
    """Every gateway of the test is stopped and checked when the test ends."""
    yield
    allowed = [p for m in request.node.iter_markers("expected_log") for p in m.args]
    failures = []
    for g in list(Gateway.live):
        if g.shared and allowed:
            g.settle_output()  # the lines this test provoked are its own
        if g.shared:
            failures += [f"gateway on port {g.port} logged:\n{p}" for p in g.log_problems(allowed)]
        else:
            failures += g.finish(allowed)
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


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


def shared_gateway(redis_server, tmp_path_factory, name: str, **kw):
    """A gateway for many tests (a fixture's body): checked when the fixture ends."""
    g = Gateway(redis_server.url, tmp_path_factory.mktemp(name), shared=True, **kw).start()
    yield g
    g.close()


@pytest.fixture(scope="session")
def gw(redis_server, tmp_path_factory):
    """The shared dev gateway: 2 workers, dev identity (X-User-Id), limits off."""
    yield from shared_gateway(redis_server, tmp_path_factory, "gw")


@pytest.fixture(scope="session")
def prod_gw(redis_server, tmp_path_factory):
    """The shared prod gateway: 2 workers, signed tokens, the default rate limits, a
    trusted proxy's X-Forwarded-For (a client IP per user), a global admission rate."""
    yield from shared_gateway(redis_server, tmp_path_factory, "prod-gw", mode="prod")


@pytest.fixture(params=MODES)
def any_gw(request):
    """The shared gateway of each identity mode in turn: a test that takes it runs
    against dev identity and against the production configuration."""
    return request.getfixturevalue("gw" if request.param == "dev" else "prod_gw")


@pytest.fixture(scope="session")
def pg_cluster():
    """A private PostgreSQL cluster (tests/pg_support.py), skipped where the machine has
    no PostgreSQL binaries: its tests are marked ci_required (CI installs them)."""
    from tests import pg_support

    why = pg_support.missing()
    if why:
        pytest.skip(why)
    cluster = pg_support.PostgresCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster):
    """The URL of a new empty database of the private cluster."""
    return pg_cluster.create_db()
