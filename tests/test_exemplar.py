"""Exemplar query expansion: a text query lends the photos of the train captions nearest to it, and a
candidate photo close to those gains beta * cosine in the fused score (text -> image only)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xmodal.engine.eval.recall import recall_at_k, t2i_ranks
from xmodal.engine.rerank.lite import TextTokens, sentence_vectors
from xmodal.engine.rerank.scoring import exemplar_expansion, pack_keys, unpack_keys
from xmodal.engine.rerank.backends import rerank_hits
from xmodal.engine.training.rerank import RerankConfig, build_fusion, fit_pca, rerank_eval, save_checkpoint
from xmodal.indexer.records import SearchHit


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_a_small_temperature_returns_the_nearest_captions_photo():
    keys = np.eye(4, dtype=np.float32)  # 4 captions
    photos = _unit(np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32))
    value_of = np.array([2, 0, 1, 0])  # caption -> its photo
    query = _unit(np.array([[0.2, 0.1, 0.9, 0.3]], np.float32))  # nearest caption: 2, whose photo is 1
    e = exemplar_expansion(query, keys, photos, value_of, m=3, tau=0.001)
    np.testing.assert_allclose(e[0], photos[1], atol=1e-5)


def test_a_large_temperature_averages_the_m_nearest_captions_photos():
    keys = np.eye(4, dtype=np.float32)
    photos = _unit(np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32))
    query = _unit(np.array([[0.5, 0.45, 0.1, 0.0]], np.float32))
    e = exemplar_expansion(query, keys, photos, m=2, tau=1e6)  # m = 2: captions 0 and 1, equal weights
    np.testing.assert_allclose(e[0], _unit(photos[0] + photos[1]), atol=1e-5)
    assert np.linalg.norm(exemplar_expansion(query, keys, photos, m=4, tau=0.1), axis=1) == pytest.approx(1.0)


def test_mismatched_shapes_and_bad_photo_indices_are_named():
    keys, photos = np.eye(4, dtype=np.float32), np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="keys"):
        exemplar_expansion(np.ones((1, 5), np.float32), keys, photos)
    with pytest.raises(ValueError, match="outside the 2 values"):
        exemplar_expansion(np.ones((1, 4), np.float32), keys, photos, value_of=np.array([0, 1, 2, 0]))


def test_int8_keys_keep_cosines_within_a_hundredth():
    keys = _unit(np.random.default_rng(2).standard_normal((50, 384)).astype(np.float32))
    q, scale = pack_keys(keys)
    assert q.dtype == np.int8 and q.shape == (50, 384)
    back = unpack_keys(q, scale)
    assert np.abs((back * keys).sum(1) - 1).max() < 1e-2
    np.testing.assert_allclose(back @ keys[:5].T, keys @ keys[:5].T, atol=1e-2)


def test_sentence_vectors_mean_pool_the_real_tokens_only():
    states = torch.randn(2, 4, 384)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    padded = states.clone()
    padded[0, 2:] = 100.0  # padding must not move the first sentence
    v = sentence_vectors(TextTokens(padded, mask))
    np.testing.assert_allclose(v[0], _unit(states[0, :2].mean(0).numpy()), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)


def test_rerank_hits_adds_beta_times_the_exemplar_cosine():
    hits = [SearchHit(rank=i + 1, score=s, id=i, path=f"/p/{i}.jpg") for i, s in enumerate((0.9, 0.85, 0.8))]
    out = rerank_hits(hits, np.zeros(3), 0.5, prior=np.zeros(3), exemplar=np.array([0.0, 0.1, 0.9]), beta=0.2)
    assert [h.id for h in out] == [2, 0, 1]  # 0.8 + 0.18 > 0.9 > 0.85 + 0.02
    assert out[0].exemplar == 0.9 and out[0].score == pytest.approx(0.98)
    assert out[0].to_json()["exemplar"] == 0.9
    assert "exemplar" not in rerank_hits(hits, np.zeros(3), 0.5)[0].to_json()  # none given: none shown


def _tiny(n_img=10, seed=0):
    from tests.test_rerank import _tiny_data

    return _tiny_data(n_img, seed)


def test_rerank_eval_adds_beta_times_the_expansion_to_text_to_image_only():
    data = _tiny()
    torch.manual_seed(0)
    model = build_fusion(RerankConfig(arch="match", dim=32), 8)
    n_cap, n_img = data.sim.shape
    rng = np.random.default_rng(3)
    prior_img, prior_cap = rng.uniform(0, 0.3, n_img), rng.uniform(0, 0.3, n_cap)
    expansion = rng.uniform(-1, 1, (n_cap, n_img))
    rep = rerank_eval(model, data.tokens, data.patches, data.sim, data.caption_image, ks=(n_img,), alpha=0.0,
                      beta=0.5, priors=(prior_img, prior_cap), expansion=expansion)
    # K = every image and alpha 0: the text -> image ranking is exactly that of dual - prior + beta * expansion
    want = recall_at_k(t2i_ranks(data.sim - prior_img[None, :] + 0.5 * expansion, data.caption_image))
    assert rep["K"][n_img]["t2i"] == want and rep["exemplar"][n_img]["t2i"] == want
    assert rep["K"][n_img]["beta"] == {"t2i": 0.5, "i2t": 0.0}
    assert rep["K"][n_img]["i2t"] == rep["hub"][n_img]["i2t"]  # image -> text has no exemplar term
    # and the expansion matters: a different one ranks differently
    other = rerank_eval(model, data.tokens, data.patches, data.sim, data.caption_image, ks=(n_img,), alpha=0.0,
                        beta=0.5, priors=(prior_img, prior_cap), expansion=-expansion)
    assert other["K"][n_img]["t2i"] != want
    # without a fixed beta the best one of the grid is chosen, 0 included
    free = rerank_eval(model, data.tokens, data.patches, data.sim, data.caption_image, ks=(4,), alpha=0.0,
                       priors=(prior_img, prior_cap), expansion=expansion)
    best = free["K"][4]["beta"]["t2i"]
    for b in (0.0, 0.1, 0.3):
        fixed = rerank_eval(model, data.tokens, data.patches, data.sim, data.caption_image, ks=(4,), alpha=0.0,
                            beta=b, priors=(prior_img, prior_cap), expansion=expansion)
        assert fixed["K"][4]["t2i"]["R@1"] <= free["K"][4]["t2i"]["R@1"]
    assert best in (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)


def _checkpoint(path, exemplars=True):
    cfg = RerankConfig(arch="match", dim=32, patch_dim=8)
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(30, 16, generator=g), dim=1)
    bank = {"texts": torch.nn.functional.normalize(torch.randn(40, 16, generator=g), dim=1).half(),
            "images": images.half(), "tau": 0.05}
    keys = torch.nn.functional.normalize(torch.randn(60, 384, generator=g), dim=1)
    if exemplars:
        q, scale = pack_keys(keys)
        q, scale = torch.from_numpy(q), torch.from_numpy(scale)  # as a checkpoint holds them
        bank["exemplars"] = {"keys": q, "scale": scale, "images": torch.arange(60, dtype=torch.int32) % 30,
                             "m": 3, "tau": 0.02}
    save_checkpoint(path, build_fusion(cfg, 8).state_dict(), cfg, fit_pca(torch.randn(300, 1280), 8), 0.1, {},
                    data="synthetic", hub=bank, beta={"t2i": 0.15, "i2t": 0.0} if exemplars else None)
    return bank, keys


def test_the_checkpoint_carries_the_exemplar_bank_and_beta(tmp_path):
    from xmodal.engine.rerank.lite import Reranker

    bank, keys = _checkpoint(tmp_path / "r.pt")
    r = Reranker(tmp_path / "r.pt")
    assert r.beta == {"t2i": 0.15, "i2t": 0.0} and r.exemplars["m"] == 3
    states, mask = torch.randn(1, 5, 384), torch.ones(1, 5, dtype=torch.long)
    cands = _unit(np.random.default_rng(4).standard_normal((7, 16)).astype(np.float32))
    got = r.exemplar_scores(TextTokens(states, mask), cands)
    q = sentence_vectors(TextTokens(states, mask))
    e = exemplar_expansion(q, unpack_keys(bank["exemplars"]["keys"], bank["exemplars"]["scale"]),
                           bank["images"].float().numpy(), np.arange(60) % 30, m=3, tau=0.02)
    np.testing.assert_allclose(got, cands @ e[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.exemplar_matrix(q, cands)[0], got, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_without_exemplars_has_beta_zero_and_no_term(tmp_path):
    from xmodal.engine.rerank.lite import Reranker

    _checkpoint(tmp_path / "r.pt", exemplars=False)
    r = Reranker(tmp_path / "r.pt")
    assert r.exemplars is None and r.beta == {"t2i": 0.0, "i2t": 0.0}
    assert r.exemplar_scores(TextTokens(torch.randn(1, 3, 384), torch.ones(1, 3, dtype=torch.long)),
                             np.ones((2, 16), np.float32)) is None
