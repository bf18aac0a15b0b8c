"""The benchmark harness still runs end to end: `python -m bench --quick`.

No timing assertions: the numbers of a seconds-long run on a CI machine mean
nothing. What must hold is that every process starts and stops, wrk's output is
understood, the reports are written, both configurations of flashgate (prod and dev)
ran next to the peers, and the sale invariants pass in each; the live scenario's
subscribers all got their streams and timed frames.
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


@pytest.mark.ci_required  # .ci/run installs wrk and nginx
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
    assert {c["scenario"] for c in results["configs"]} >= {"soldout", "commit", "rush",
                                                           "lifecycle", "live", "replicas"}
    md = (tmp_path / "quick.md").read_text()
    assert md.startswith("# flashgate benchmarks")

    # soldout and commit ran flashgate in both configurations, next to both peers
    rows = {(c["scenario"], c["label"]): c for c in results["configs"] if c.get("summary")}
    for scenario in ("soldout", "commit"):
        for label in ("nginx", "flashgate-prod", "flashgate-dev", "fastapi"):
            assert (scenario, label) in rows, f"{scenario} has no {label} column"
        prod, dev = rows[(scenario, "flashgate-prod")], rows[(scenario, "flashgate-dev")]
        assert prod["config"] == "prod" and dev["config"] == "dev"
        assert "--user-secret" in prod["setup"]["flags"]
        assert "--trusted-proxies" in prod["setup"]["flags"]
        assert "--ip-rate" not in prod["setup"]["flags"]
        assert "--ip-rate 0 --user-rate 0" in dev["setup"]["flags"]
        assert "appendonly yes" in prod["setup"]["redis"]
        assert dev["setup"]["redis"] == prod["setup"]["redis"]
        # each column's sale held up: an audit per Redis-backed column, all passed
        for label in ("flashgate-prod", "flashgate-dev", "fastapi"):
            audits = [a for a in results["audits"]
                      if a["scenario"] == scenario and a["target"] == label]
            assert audits and all(a["ok"] for a in audits), audits
            assert rows[(scenario, label)]["invariants_ok"] is True
        # the signed tokens were accepted, and the default limits refused (almost) no buyer
        for row in (prod, dev, rows[(scenario, "fastapi")]):
            statuses = row["summary"]["statuses"]
            assert "401" not in statuses, (row["label"], statuses)
            assert row["summary"]["answers"].get("429", 0) < 0.01, (row["label"], statuses)
        want = "409" if scenario == "soldout" else "200"
        assert prod["summary"]["answers"].get(want, 0) > 0.99, prod["summary"]["statuses"]
    assert results["setups"]["prod"]["flashgate"]["limits"].startswith("defaults")
    assert {g["config"] for g in results["goals"]} == {"prod", "dev"}
    assert "## Configurations" in md and "## Targets" in md

    # lifecycle: orders were paid and expired, every audit (the sale's, the lifecycle's,
    # the sweeper's micro-measurement) passed
    life = rows[("lifecycle", "flashgate-prod")]
    assert life["summary"]["orders_paid"] > 0 and life["summary"]["orders_expired"] > 0
    audits = [a for a in results["audits"] if a["scenario"] == "lifecycle"]
    assert len(audits) == 3 and all(a["ok"] for a in audits), audits
    assert all(x["ok"] and x["expired"] == x["orders"] for x in life["sweeper_cost"])
    assert "## lifecycle" in md

    # live: the commit load without and with 500 subscribers, every one subscribed, the
    # frames timed by their tick, the sale audited
    lv = rows[("live", "flashgate-prod+streams")]["live"]
    assert lv["subscribers"] == 500 and lv["at_rest"]["connect"]["ready"]["subscribed"] == 500
    assert lv["deliveries"] > 0 and lv["within_50ms_share"] is not None
    assert lv["at_rest"]["stream"]["deliveries"] > 0
    assert rows[("live", "flashgate-prod")]["summary"]["answers"].get("200", 0) > 0.99
    audits = [a for a in results["audits"] if a["scenario"] == "live"]
    assert len(audits) == 1 and audits[0]["ok"], audits
    assert "## live" in md and any(g["scenario"] == "live" for g in results["goals"])

    # replicas: the commit load without a replica, with one, and with --commit-replicas 1
    # (a WAIT per group commit); every answer a sale; each master and replica audited
    for label, waits in (("flashgate-prod", 0), ("flashgate-prod+replica", 0),
                         ("flashgate-prod+wait1", 1)):
        row = rows[("replicas", label)]
        assert row["commit_replicas"] == waits and row["replica"] == (label != "flashgate-prod")
        assert row["summary"]["answers"].get("200", 0) > 0.99, row["summary"]["statuses"]
        assert (row["summary"]["redis_waits_per_order"] or 0) > 0 if waits else \
            row["summary"]["redis_waits_per_order"] == 0
    audits = [a for a in results["audits"] if a["scenario"] == "replicas"]
    assert len(audits) == 5 and all(a["ok"] for a in audits), audits
    assert "## replicas" in md
