"""The hook of tests/conftest.py that makes a skipped required check fail in CI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TESTS = textwrap.dedent("""
    import pytest

    @pytest.mark.ci_required
    def test_required_skips():
        pytest.skip("no such tool")

    @pytest.mark.ci_required
    @pytest.mark.skipif(True, reason="no such tool either")
    def test_required_skipif():
        pass

    def test_optional_skips():
        pytest.skip("not needed")

    @pytest.mark.ci_required
    @pytest.mark.xfail(reason="a known defect")
    def test_required_xfail():
        assert False

    @pytest.mark.ci_required
    def test_required_passes():
        pass
""")


def run(where: Path, ci: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(REPO)
    if ci:
        env["CI"] = "true"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", str(where)],
        cwd=where, env=env, capture_output=True, text=True, timeout=120)
    return out.stdout + out.stderr


def test_a_skipped_required_check_fails_only_in_ci(tmp_path):
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_runtest_makereport  # noqa: F401\n\n\n"
        "def pytest_configure(config):\n"
        "    config.addinivalue_line('markers', 'ci_required: required in CI')\n")
    (tmp_path / "test_tools.py").write_text(TESTS)
    local = run(tmp_path, ci=False)
    assert "1 passed, 3 skipped, 1 xfailed" in local, local
    ci = run(tmp_path, ci=True)
    # (a skip at setup, by a skipif mark or a fixture, fails as an error of the setup)
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error" in ci, ci
    assert "FAILED test_tools.py::test_required_skips" in ci, ci
    assert "a required check was skipped with CI=true: Skipped: no such tool either" in ci, ci
