"""A short run of each atheris fuzz harness: they still start, run and find nothing.

The long runs are for people (README, "Fuzzing"; each harness's docstring has its
last figures); here every harness runs a fixed number of inputs from a fixed seed and
a fixed string hash (``PYTHONHASHSEED=0``), so that a red run can be replayed:
``PYTHONHASHSEED=0 python tests/fuzz/<harness>.py -seed=1 -runs=N`` (the request
path also reads Redis's clock, so its replay is close, not exact). A failing input is
printed with the failure, and can be replayed alone by passing its file to the
harness. The hypothesis versions of the same properties run in the unit and
integration tests.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                       reason="atheris is not installed (pip install atheris; Linux x86_64 wheels)"),
    pytest.mark.ci_required,  # the test extra installs it on CI's Linux x86_64
    pytest.mark.timeout(420),  # a harness may take its subprocess's 300 s
]

HARNESSES = [
    # harness, inputs, libFuzzer options
    ("fuzz_http_parser.py", 20_000, ["-max_len=2048"]),
    ("fuzz_proxy_header.py", 20_000, ["-max_len=512"]),
    ("fuzz_request_path.py", 20_000, ["-max_len=4096", "-timeout=60"]),
]


@pytest.mark.parametrize("harness,runs,options", HARNESSES, ids=[h[0] for h in HARNESSES])
def test_fuzz_harness_short_run(tmp_path, harness, runs, options):
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "fuzz" / harness), "-seed=1", f"-runs={runs}",
         *options],
        cwd=tmp_path,  # a failing input would be written here (crash-<sha1>)
        env={**os.environ, "PYTHONHASHSEED": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    for crash in tmp_path.glob("crash-*"):
        out += f"\nfailing input {crash.name}: {crash.read_bytes()[:2000]!r}"
    assert proc.returncode == 0, out[-6000:]
    # libFuzzer's count of runs can end a few past -runs=N (20,004 once in CI): at least N
    done = re.search(r"Done (\d+) runs", out)
    assert done and int(done.group(1)) >= runs, out[-3000:]
    assert not list(tmp_path.glob("crash-*")), out[-3000:]
    if harness == "fuzz_request_path.py":  # it sold stock: the invariants were checked last
        assert f"stock invariants hold after {runs} inputs" in out, out[-3000:]
