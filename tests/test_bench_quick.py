"""The benchmark harness still runs end to end: `python -m bench --quick`.

No timing assertions: the numbers of a seconds-long run on a CI machine mean
nothing. What must hold is that every process starts and stops, wrk's output is
understood, the reports are written, and the sale invariants pass.
"""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MISSING = [tool for tool in ("wrk", "nginx", "redis-server") if shutil.which(tool) is None]
MISSING_PY = [m for m in ("fastapi", "uvicorn", "redis") if importlib.util.find_spec(m) is None]


@pytest.mark.skipif(bool(MISSING), reason=f"bench needs {', '.join(MISSING)} on PATH")
@pytest.mark.skipif(bool(MISSING_PY), reason=f"bench needs {', '.join(MISSING_PY)}: "
                    "pip install -e '.[bench]'")
def test_bench_quick(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path), "--name", "quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads((tmp_path / "quick.json").read_text())
    assert results["error"] is None
    assert results["audits"], "no invariant audit ran"
    assert results["invariants_ok"], results["audits"]
    assert {c["scenario"] for c in results["configs"]} >= {"soldout", "commit", "rush"}
    assert (tmp_path / "quick.md").read_text().startswith("# flashgate benchmarks")
