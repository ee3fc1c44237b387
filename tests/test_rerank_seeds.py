"""benchmarks/rerank_seeds.py: the seed spread of reranker figures is computed from the runs' own --json output."""
import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("rerank_seeds", REPO / "benchmarks" / "rerank_seeds.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(tmp_path: Path, name: str, t2i_r1: float, rr_t2i_r1: float) -> Path:
    row = lambda r1: {"t2i": {"R@1": r1, "R@5": 50.0, "R@10": 60.0}, "i2t": {"R@1": 30.0, "R@5": 55.0, "R@10": 65.0}}
    dev = {"dual": row(t2i_r1), "K": {"16": {**row(rr_t2i_r1), "alpha": {"t2i": 0.4, "i2t": 0.3}, "beta": None}}}
    path = tmp_path / name
    path.write_text(json.dumps({"dev": dev, "history": []}))
    return path


def test_summary_gives_mean_sd_and_each_seeds_value_per_stage(tmp_path):
    mod = _script()
    runs = [_run(tmp_path, "a.json", 26.0, 29.0), _run(tmp_path, "b.json", 27.0, 30.0)]
    summary = mod.summarise([mod.dev_figures(r) for r in runs])
    assert summary["dual"]["t2i"]["R@1"] == {"mean": 26.5, "values": [26.0, 27.0], "sd": 0.71}
    assert summary["K=16"]["t2i"]["R@1"]["mean"] == 29.5
    assert summary["K=16"]["i2t"]["R@1"]["sd"] == 0.0
    assert summary["K=16"]["weights"][0]["alpha"] == {"t2i": 0.4, "i2t": 0.3}


def test_a_single_run_has_no_spread(tmp_path):
    mod = _script()
    summary = mod.summarise([mod.dev_figures(_run(tmp_path, "a.json", 26.0, 29.0))])
    assert "sd" not in summary["dual"]["t2i"]["R@1"]
