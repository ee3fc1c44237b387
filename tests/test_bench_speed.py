"""`xmodal bench speed` runs end to end at a tiny scale (a smoke test: figures are measured by the
benchmark itself, never asserted as timings here), through the same code as benchmarks/scale.py."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
from click.testing import CliRunner

from conftest import REPO
from xmodal.engine.cli.main import cli
from xmodal.engine.eval.simulate import simulated_collection


def test_simulated_vectors_share_the_real_distribution_without_near_duplicates():
    rng = np.random.default_rng(0)
    scales = np.linspace(3.0, 0.2, 16)  # an anisotropic space around a common direction, like embeddings
    real = (np.r_[4.0, np.zeros(15)] + rng.normal(size=(3000, 16)) * scales).astype(np.float32)
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    sim = simulated_collection(real, 3000, seed=1)
    np.testing.assert_allclose(np.linalg.norm(sim, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(sim.mean(0), real.mean(0), atol=0.03)
    np.testing.assert_allclose(np.linalg.eigvalsh(np.cov(sim.T)), np.linalg.eigvalsh(np.cov(real.T)), rtol=0.2, atol=2e-3)
    nearest = np.sort(sim[:200] @ sim.T, axis=1)[:, -2]  # best match other than itself
    assert nearest.max() < 0.999


def _bench_speed_json(photos, monkeypatch) -> dict:
    monkeypatch.setenv("XMODAL_FLICKR8K", "")  # as for a user without the Flickr8k data
    out = CliRunner().invoke(cli, ["bench", "speed", "--photos", str(photos), "--scale", "2000", "--model",
                                   "fake-colour", "--json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


def test_bench_speed_reports_every_figure(photos, fake_encoder, monkeypatch):
    r = _bench_speed_json(photos, monkeypatch)
    for key in ("index_img_s", "forward_img_s", "query_ms_p50", "query_ms_p95", "rerank_ms_p50", "ann_recall_at_10",
                "speedup_vs_exact", "rss_mb", "factory", "search_params", "cpu", "cores", "distribution_source"):
        assert key in r
    assert r["photos"] == 4 and r["factory"] == "Flat" and r["ann_recall_at_10"] == 1.0
    assert r["search_params"] == {} and r["cpu"] and r["cores"] >= 1
    # no Flickr8k data: the distribution is fitted to the photos given, and the output says so
    assert str(photos) in r["distribution_source"] and "no Flickr8k data" in r["distribution_source"]
    # memory: a fresh search process over the saved index and store, not the benchmark's own
    assert r["rss_mb"] == r["scale_run"]["search_process"]["rss_mb"]


def test_bench_speed_and_the_scale_script_share_one_code_path(photos, fake_encoder, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_scale_script", REPO / "benchmarks" / "scale.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    from xmodal.engine.eval import scale

    assert script.run_scale is scale.run_scale
    cli_run = _bench_speed_json(photos, monkeypatch)["scale_run"]
    script_run = script.main(["--scales", "2000", "--model", "fake-colour", "--data", "", "--photos", str(photos),
                              "--no-hnswlib"])["scales"][0]
    assert set(cli_run) == set(script_run)
    for key in ("n", "factory", "ann_recall_at_10", "estimated_index_bytes", "index_file_bytes"):
        assert cli_run[key] == script_run[key], key
    assert cli_run["tuning"]["params"] == script_run["tuning"]["params"]


def test_mixture_keeps_the_clusters_of_the_real_vectors():
    """Three tight groups of real vectors: the mixture draws around the groups, in their proportions,
    where a single Gaussian spreads everything between them."""
    from xmodal.engine.eval.simulate import gaussian_like, mixture_like

    rng = np.random.default_rng(0)
    centres = np.eye(16)[:3] * 3
    sizes = [600, 300, 100]
    real = np.concatenate([c + 0.3 * rng.normal(size=(n, 16)) for c, n in zip(centres, sizes)]).astype(np.float32)
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    unit = centres / 3
    mix = np.concatenate(list(mixture_like(real, 3000, seed=1)))
    one = np.concatenate(list(gaussian_like(real, 3000, seed=1)))
    np.testing.assert_allclose(np.linalg.norm(mix, axis=1), 1.0, atol=1e-5)
    share = np.bincount((mix @ unit.T).argmax(1), minlength=3) / len(mix)
    np.testing.assert_allclose(share, np.array(sizes) / 1000, atol=0.05)
    assert (mix @ unit.T).max(1).mean() > (one @ unit.T).max(1).mean() + 0.1


def test_streamed_exact_search_finds_what_a_resident_flat_finds():
    """Beyond one piece, exact search streams the vectors; its timings survive later untimed searches
    (tuning searches again after the timed pass)."""
    from xmodal.engine.eval.scale import Exact

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 16)).astype(np.float32)
    q = rng.normal(size=(20, 16)).astype(np.float32)
    resident, streamed = Exact(x), Exact(x, piece=300)
    assert resident.flat is not None and streamed.flat is None
    found = streamed.search(q, 10, timed=q[:3])
    np.testing.assert_array_equal(found, resident.search(q, 10))
    streamed.search(q, 10)
    assert len(streamed.flat_s) == len(streamed.numpy_s) == 3
