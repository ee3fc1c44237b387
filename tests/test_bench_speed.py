"""`xmodal bench speed` runs end to end at a tiny scale (a smoke test: figures are measured by the
benchmark itself, never asserted as timings here)."""
from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from xmodal.engine.cli.main import cli
from xmodal.engine.eval.speed import simulated_collection


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


def test_bench_speed_reports_every_figure(photos, fake_encoder):
    out = CliRunner().invoke(cli, ["bench", "speed", "--photos", str(photos), "--scale", "2000", "--model",
                                   "fake-colour", "--json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    r = json.loads(out.stdout)
    for key in ("index_img_s", "forward_img_s", "query_ms_p50", "query_ms_p95", "rerank_ms_p50", "ann_recall_at_10",
                "speedup_vs_exact", "rss_mb"):
        assert key in r
    assert r["photos"] == 4 and r["factory"] == "Flat" and r["ann_recall_at_10"] == 1.0


def test_mixture_keeps_the_clusters_of_the_real_vectors():
    """Three tight groups of real vectors: the mixture draws around the groups, in their proportions,
    where a single Gaussian spreads everything between them."""
    from xmodal.engine.eval.speed import gaussian_like, mixture_like

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
