"""The benchmark scripts run end to end at tiny sizes (`run_all.py --quick`) so that they never rot.
Figures are the benchmarks' business; this only checks that every step ran and the report was written."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.data]


def test_every_benchmark_runs_and_the_report_is_regenerated(flickr8k, tmp_path):
    out = tmp_path / "bench"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("load_test", "rerank_dev", "rerank_latency", "speed_small", "decode_draft", "scale"):
        assert json.loads((out / f"{name}.json").read_text()), name
    scale = json.loads((out / "scale.json").read_text())
    assert [s["n"] for s in scale["scales"]] == [2000, 20000]
    assert {"faiss Flat (exact)", "NumPy brute force"} <= set(scale["scales"][1]["peers"])
    report = (out / "RESULTS.md").read_text()
    for section in ("Web API load test", "rerank depth K", "bench speed", "draft decoding", "Speed at scale"):
        assert section in report
