"""Fusion reranker: attention over patches, score fusion, top-k reranking, training on a tiny cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xmodal.engine.rerank.model import CrossAttentionMatcher, FusionReranker
from xmodal.engine.eval.recall import t2i_ranks
from xmodal.engine.rerank.lite import LITE_RERANK
from xmodal.engine.rerank.scoring import fuse, hub_prior, reranked_matrix, rerank_topk
from xmodal.engine.training.rerank import (RerankConfig, RerankData, TokenCache, build_fusion, mine, rerank_eval,
                                   train_rerank)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return FusionReranker(patch_dim=8, dim=32, layers=2, heads=4, ffn=64, dropout=0.0, **kw).eval()


def _inputs(b=3, t=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(b, t, 384, generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, 3:] = 0
    patches = torch.randn(b, 49, 8, generator=g)
    return text, mask, patches


def test_shapes_and_attention_weights():
    m = _model()
    text, mask, patches = _inputs()
    logits, attn = m(text, mask, patches, return_attention=True)
    assert logits.shape == (3,)
    assert len(attn) == 2 and attn[0].shape == (3, 4, 5, 49)
    torch.testing.assert_close(attn[0].sum(-1), torch.ones(3, 4, 5))
    torch.testing.assert_close(m(text, mask, patches), logits)


def _matcher(seed=0, **kw):
    torch.manual_seed(seed)
    m = CrossAttentionMatcher(patch_dim=8, dim=32, **kw).eval()
    with torch.no_grad():
        m.patch_pos.normal_(std=0.5)  # trained models have positions; zero would hide position bugs
    return m


@pytest.mark.parametrize("both", [False, True])
def test_matcher_attends_from_words_to_patches_and_scores_like_its_pairwise_form(both):
    m = _matcher(both=both)
    text, mask, patches = _inputs()
    scores, attn = m(text, mask, patches, return_attention=True)
    assert scores.shape == (3,) and attn[0].shape == (3, 1, 5, 49)
    torch.testing.assert_close(attn[0].sum(-1), torch.ones(3, 1, 5))
    assert float(scores.detach().abs().max()) <= (2.0 if both else 1.0) + 1e-5  # mean cosines
    # every text against every image at once equals the row-wise pairs
    table = m.pairwise(text, mask, patches)  # (3 texts, 3 images)
    for j in range(3):
        torch.testing.assert_close(table[:, j], m(text, mask, patches[j:j + 1].expand(3, -1, -1)))


MODELS = {"itm": _model, "match": _matcher, "match, both directions": lambda: _matcher(both=True)}


@pytest.mark.parametrize("kind", MODELS)
def test_score_depends_on_patches_and_ignores_masked_ones(kind):
    m = MODELS[kind]()
    text, mask, patches = _inputs()
    base = m(text, mask, patches)
    changed = patches.clone()
    changed[:, :10] += 3.0
    assert not torch.allclose(m(text, mask, changed), base)
    patch_mask = torch.ones(3, 49, dtype=torch.long)
    patch_mask[:, 20:] = 0
    masked = m(text, mask, patches, patch_mask=patch_mask)
    assert not torch.allclose(masked, base)  # masking out patches changes the score
    # masked patches are ignored: changing them leaves the score as it is, and no word attends to them
    other = patches.clone()
    other[:, 20:] = torch.randn(3, 29, 8)
    torch.testing.assert_close(m(text, mask, other, patch_mask=patch_mask), masked)
    _, attn = m(text, mask, patches, patch_mask=patch_mask, return_attention=True)
    assert float(attn[0][..., 20:].detach().abs().max()) == 0.0
    if hasattr(m, "pairwise"):
        torch.testing.assert_close(m.pairwise(text, mask, other, patch_mask=patch_mask).diagonal(), masked)


@pytest.mark.parametrize("kind", MODELS)
def test_padding_tokens_do_not_change_the_score(kind):
    m = MODELS[kind]()
    text, mask, patches = _inputs()
    text2 = text.clone()
    text2[0, 3:] = 100.0  # padding of row 0
    torch.testing.assert_close(m(text2, mask, patches), m(text, mask, patches))


def test_hub_prior_is_the_temperature_scaled_log_sum_exp_over_the_bank():
    rng = np.random.default_rng(0)
    e1 = np.eye(8)[0]
    bank = np.concatenate([e1 + 0.1 * rng.standard_normal((20, 8)), rng.standard_normal((30, 8))])
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    v = np.stack([e1, -e1])  # a hub, near 20 of the bank's rows; and its opposite, near none of them
    p = hub_prior(v, bank, 0.05)
    expected = 0.05 * np.log(np.exp(v @ bank.T / 0.05).sum(1))
    np.testing.assert_allclose(p, expected, rtol=1e-5)
    assert p[0] > p[1]
    with pytest.raises(ValueError, match="equal widths"):
        hub_prior(v, bank[:, :4], 0.05)


def test_rerank_eval_subtracts_hub_priors_from_the_dual_scores():
    data = _tiny_data()
    m = _model()
    n_img, n_cap = data.sim.shape[1], data.sim.shape[0]
    zero = rerank_eval(m, data.tokens, data.patches, data.sim, data.caption_image, ks=(4,), alpha=0.0,
                       priors=(np.zeros(n_img), np.zeros(n_cap)))
    assert zero["hub"][4]["t2i"] == zero["dual"]["t2i"]
    # reranking every candidate (K = all images) by dual - prior ranks exactly as the corrected matrix does
    from xmodal.engine.eval.recall import i2t_ranks, recall_at_k

    rng = np.random.default_rng(5)
    prior_img, prior_cap = rng.uniform(0, 0.5, n_img), rng.uniform(0, 0.5, n_cap)
    rep = rerank_eval(m, data.tokens, data.patches, data.sim, data.caption_image, ks=(n_img,), alpha=0.0,
                      priors=(prior_img, prior_cap))
    assert rep["hub"][n_img]["t2i"] == recall_at_k(t2i_ranks(data.sim - prior_img[None, :], data.caption_image))
    top_caps = np.argsort(-data.sim.T, axis=1, kind="stable")[:, :n_img]  # each image's top-K captions
    corrected = np.full(data.sim.T.shape, -np.inf)
    np.put_along_axis(corrected, top_caps, np.take_along_axis(data.sim.T - prior_cap[None, :], top_caps, 1), 1)
    assert rep["hub"][n_img]["i2t"] == recall_at_k(i2t_ranks(corrected, data.caption_image))
    assert rep["hub"][n_img] != rerank_eval(m, data.tokens, data.patches, data.sim, data.caption_image,
                                            ks=(n_img,), alpha=0.0, priors=(prior_img * 0, prior_cap * 0))["hub"][n_img]


def test_fuse_and_rerank_topk():
    np.testing.assert_allclose(fuse([0.5, 0.2], [1.0, -1.0], 0.0), [0.5, 0.2])
    np.testing.assert_allclose(fuse([0.5, 0.2], [1.0, -1.0], 0.1), [0.6, 0.1])
    ids, scores = rerank_topk([7, 3, 9], [0.9, 0.8, 0.7], [-5.0, 0.0, 5.0], 0.1)
    assert ids.tolist() == [9, 3, 7]
    np.testing.assert_allclose(scores, [1.2, 0.8, 0.4])
    ids, _ = rerank_topk([7, 3, 9], [0.9, 0.8, 0.7], [1.0, 1.0, 1.0], 0.5)  # equal ITM: dual order
    assert ids.tolist() == [7, 3, 9]
    ids, _ = rerank_topk([1, 2], [0.5, 0.5], [0.0, 0.0], 1.0)  # full ties: input order kept
    assert ids.tolist() == [1, 2]
    with pytest.raises(ValueError):
        rerank_topk([1, 2], [0.5], [0.1], 1.0)


def test_reranked_matrix_keeps_order_beyond_k():
    sim = np.array([[0.9, 0.8, 0.7, 0.1, 0.05]])
    top = np.array([[0, 1, 2]])
    out = reranked_matrix(sim, top, np.array([[0.0, 0.0, 5.0]]))
    assert np.argsort(-out[0], kind="stable").tolist() == [2, 0, 1, 3, 4]
    # truth beyond K keeps its dual rank
    assert t2i_ranks(out, np.array([3])).tolist() == [3]
    assert t2i_ranks(out, np.array([2])).tolist() == [0]


def _tiny_data(n_img=12, seed=0, text_dim=384, patches=49):
    rng = np.random.default_rng(seed)
    ci = np.repeat(np.arange(n_img), 2)
    lens = rng.integers(3, 7, len(ci))
    offsets = np.concatenate([[0], np.cumsum(lens)])
    states = rng.standard_normal((offsets[-1], text_dim)).astype(np.float16)
    patches = torch.from_numpy(rng.standard_normal((n_img, patches, 8)).astype(np.float16))
    img = torch.nn.functional.normalize(torch.randn(n_img, 16, generator=torch.Generator().manual_seed(seed)), dim=1)
    txt = torch.nn.functional.normalize(img[ci] + 0.5 * torch.randn(len(ci), 16), dim=1)
    d = RerankData(TokenCache(states, offsets), patches, ci)
    d.neg_img, d.neg_cap = mine(img, txt, ci, 4)
    d.sim = (txt @ img.T).numpy()
    return d


def test_mining_excludes_own():
    d = _tiny_data()
    assert not (d.neg_img == d.caption_image[:, None]).any()
    assert not (d.caption_image[d.neg_cap] == np.arange(len(d.patches))[:, None]).any()


@pytest.mark.parametrize("arch", ["match", "itm"])
def test_training_runs_and_is_reproducible(arch):
    data = _tiny_data()
    cfg = dict(arch=arch, dim=32, layers=1, heads=4, ffn=64, epochs=2, batch_size=8, warmup_steps=2, select_k=4,
               seed=3)
    s1, rep1 = train_rerank(data, data, RerankConfig(**cfg))
    s2, rep2 = train_rerank(data, data, RerankConfig(**cfg))
    for k in s1:
        torch.testing.assert_close(s1[k], s2[k])
    assert rep1 == rep2
    assert set(rep1["K"][4]) >= {"alpha", "t2i", "i2t"}


def test_a_base_shaped_reranker_trains_on_mpnet_states_and_81_patches_and_saves_its_shapes(tmp_path):
    """base's reranker reads MPNet's 768-wide token states and Lite2's 9x9 patch map (81 tokens at 280 px); the
    checkpoint's config says so, and the engine's loader builds the same module from it."""
    from xmodal.engine.rerank.lite import Reranker
    from xmodal.engine.training.rerank import fit_pca, save_checkpoint

    data = _tiny_data(text_dim=768, patches=81)
    cfg = RerankConfig(dim=32, epochs=1, batch_size=8, warmup_steps=2, select_k=4, model="base", text_dim=768,
                       patches=81, patch_dim=8)
    state, _ = train_rerank(data, None, cfg)
    assert state["text_in.weight"].shape == (32, 768) and state["patch_pos"].shape == (81, 32)
    save_checkpoint(tmp_path / "base-rerank.pt", state, cfg, fit_pca(torch.randn(400, 1280), 8), 0.1, {}, data="tiny")
    r = Reranker(tmp_path / "base-rerank.pt")
    tokens = r.patch_tokens(torch.randn(2, 1280, 9, 9))
    assert tokens.shape == (2, 81, 8)
    assert r.score_text_to_images(torch.randn(5, 768), torch.ones(5, dtype=torch.long), tokens).shape == (2,)


def test_patch_tokens_are_narrowed_to_fit_a_librarys_slot():
    from xmodal.engine.training.rerank import fitting_patch_dim
    from xmodal.indexer.storage.patch_tokens import MAX_SLOT_BYTES

    assert fitting_patch_dim(128, 49) == 128  # lite: 49 x 128 float16 = 12.5 KB
    assert fitting_patch_dim(128, 81) == 96  # base: 81 x 96 float16 = 15.2 KB
    assert 81 * 96 * 2 <= MAX_SLOT_BYTES < 81 * 112 * 2
    assert fitting_patch_dim(64, 81) == 64


def test_rerank_eval_alpha_zero_is_dual():
    data = _tiny_data()
    m = _model()
    rep = rerank_eval(m, data.tokens, data.patches, data.sim, data.caption_image, ks=(4,), alpha=0.0)
    assert rep["K"][4]["t2i"] == rep["dual"]["t2i"] and rep["K"][4]["i2t"] == rep["dual"]["i2t"]


@pytest.mark.slow
@pytest.mark.skipif(not LITE_RERANK.exists(), reason="no data/lite-rerank.pt")
def test_real_reranker_loads_and_scores():
    from xmodal.engine.rerank.lite import Reranker

    r = Reranker()
    maps = torch.randn(3, 1280, 7, 7)
    tokens = r.patch_tokens(maps)
    assert tokens.shape[:2] == (3, 49)
    scores = r.score_text_to_images(torch.randn(6, 384), torch.ones(6, dtype=torch.long), tokens)
    assert scores.shape == (3,) and np.isfinite(scores).all()


@pytest.mark.parametrize("model", ["lite", "base"])
def test_each_bundled_reranker_fuses_with_the_weights_chosen_at_the_searchs_default_k(model):
    """Searches rerank the top DEFAULT_RERANK_K; the weights a checkpoint fuses with are the ones its dev
    evaluation chose at that K (RerankConfig.fuse_k), not at the K its epoch was selected with."""
    from xmodal.engine.rerank import DEFAULT_RERANK_K
    from xmodal.engine.training.rerank import RerankConfig
    from xmodal.indexer.models.towers import bundled_reranker

    path = bundled_reranker(model)
    if path is None:
        pytest.skip(f"{model}'s reranker is not installed (base: make install-base)")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    assert RerankConfig().fuse_k == DEFAULT_RERANK_K == ck["config"]["fuse_k"]
    chosen = ck["dev"]["K"][DEFAULT_RERANK_K]
    assert ck["alpha"] == chosen["alpha"] and ck["beta"] == chosen["beta"]


def _tiny_checkpoint(path, arch="match", hub=True):
    from xmodal.engine.training.rerank import build_fusion, fit_pca, save_checkpoint

    cfg = RerankConfig(arch=arch, dim=32, layers=1, heads=4, ffn=64, patch_dim=8)
    pca = fit_pca(torch.randn(500, 1280), 8)
    g = torch.Generator().manual_seed(0)
    bank = {"texts": torch.nn.functional.normalize(torch.randn(40, 16, generator=g), dim=1).half(),
            "images": torch.nn.functional.normalize(torch.randn(30, 16, generator=g), dim=1).half(), "tau": 0.05}
    save_checkpoint(path, build_fusion(cfg, 8).state_dict(), cfg, pca, 0.05, {}, data="synthetic",
                    hub=bank if hub else None)
    return bank


@pytest.mark.parametrize("arch", ["match", "itm"])
def test_reranker_checkpoint_round_trip(tmp_path, arch):
    from xmodal.engine.rerank.lite import Reranker

    bank = _tiny_checkpoint(tmp_path / "r.pt", arch)
    r = Reranker(tmp_path / "r.pt")
    assert r.arch == arch and r.alpha == {"t2i": 0.05, "i2t": 0.05}
    tokens = r.patch_tokens(torch.randn(4, 1280, 7, 7))
    assert tokens.shape == (4, 49, 8)
    t2i = r.score_text_to_images(torch.randn(6, 384), torch.ones(6, dtype=torch.long), tokens)
    assert t2i.shape == (4,) and np.isfinite(t2i).all()
    i2t = r.score_image_to_texts(tokens[0], torch.randn(3, 6, 384), torch.ones(3, 6, dtype=torch.long))
    assert i2t.shape == (3,)
    # the same pair scores the same either way round
    text = torch.randn(6, 384)
    one = torch.ones(6, dtype=torch.long)
    np.testing.assert_allclose(r.score_image_to_texts(tokens[1], text[None], one[None]),
                               r.score_text_to_images(text, one, tokens[1:2]), rtol=1e-5, atol=1e-5)
    # the hubness bank travels with the checkpoint: images are normalised against its texts and vice versa
    v = torch.nn.functional.normalize(torch.randn(5, 16), dim=1).numpy()
    np.testing.assert_allclose(r.hub_prior(v, "t2i"), hub_prior(v, bank["texts"].float().numpy(), 0.05), rtol=1e-6)
    np.testing.assert_allclose(r.hub_prior(v, "i2t"), hub_prior(v, bank["images"].float().numpy(), 0.05), rtol=1e-6)


def test_a_checkpoint_without_a_hub_bank_gives_no_prior(tmp_path):
    from xmodal.engine.rerank.lite import Reranker

    _tiny_checkpoint(tmp_path / "r.pt", hub=False)
    assert Reranker(tmp_path / "r.pt").hub_prior(np.ones((2, 16), np.float32), "t2i") is None


def test_rerank_hits_subtracts_the_prior_before_adding_the_match():
    from xmodal.indexer.records import SearchHit
    from xmodal.engine.rerank.backends import rerank_hits

    hits = [SearchHit(rank=n + 1, score=s, id=n) for n, s in enumerate([0.9, 0.8, 0.7])]
    out = rerank_hits(hits, np.zeros(3), 0.5, prior=np.array([0.25, 0.0, 0.0]))  # a hub loses its lead
    assert [h.id for h in out] == [1, 2, 0] and [h.rank for h in out] == [1, 2, 3]
    assert out[2].similarity == 0.9 and out[2].hubness == 0.25 and out[2].score == pytest.approx(0.65)
    assert out[2].to_json()["hubness"] == 0.25
    same = rerank_hits(hits, np.zeros(3), 0.5)  # no prior: dual order
    assert [h.id for h in same] == [0, 1, 2] and same[0].hubness == 0.0


def test_bench_rerank_needs_patch_features(tmp_path):
    from click.testing import CliRunner

    from conftest import COLOURS, draw
    from xmodal.engine.cli.main import cli

    root = tmp_path / "ds"
    rows = ["image,caption"]
    for colour in COLOURS:
        draw(root / "images" / f"{colour}.jpg", colour)
        rows.append(f"{colour}.jpg,a {colour} square")
    (root / "captions.txt").write_text("\n".join(rows) + "\n")
    _tiny_checkpoint(tmp_path / "r.pt")
    out = CliRunner().invoke(cli, ["bench", "recall", str(root), "--model", "fake-colour", "--rerank",
                                   "--reranker", str(tmp_path / "r.pt")])
    assert out.exit_code == 1 and "patch features" in out.output


# ---------------------------------------------------------------- word order: who is left of whom
SHAPES = 6  # colours of the constructed scenes


def _scenes(per_pair: int, seed: int):
    """Constructed scenes: colour a on the left half of a 7x7 patch grid, colour b on the right, captioned
    "[CLS] a left-of b [SEP]". Both orders of every pair occur, so the words alone (a bag of words, or any
    pooled embedding of them) cannot tell a scene from its mirror: only attention from the words, in order,
    to the right patches can."""
    rng = np.random.default_rng(seed)
    g = np.random.default_rng(0)  # fixed "vocabulary": word and position embeddings, colour features
    words, pos, colours = g.normal(size=(SHAPES + 3, 32)), g.normal(size=(6, 32)), g.normal(size=(SHAPES, 16))
    cls, left, sep = SHAPES, SHAPES + 1, SHAPES + 2
    pairs = [(a, b) for a in range(SHAPES) for b in range(SHAPES) if a != b]
    states, patches, pair_of = [], [], []
    for p, (a, b) in enumerate(pairs):
        tokens = [cls, a, left, b, sep]
        for _ in range(per_pair):
            states.append(words[tokens] + pos[:5])
            grid = 0.3 * rng.normal(size=(7, 7, 16))
            r, c = rng.integers(1, 5), rng.integers(0, 2)  # a somewhere on the left ...
            grid[r:r + 2, c:c + 2] += colours[a]
            r, c = rng.integers(1, 5), rng.integers(4, 6)  # ... b somewhere on the right
            grid[r:r + 2, c:c + 2] += colours[b]
            patches.append(grid.reshape(49, 16))
            pair_of.append(p)
    return pairs, np.asarray(pair_of), np.stack(states), np.stack(patches)


@pytest.mark.parametrize("arch", ["match", "itm"])
def test_after_training_a_scene_outscores_its_swapped_role_caption(arch):
    pairs, pair_of, states, patches = _scenes(per_pair=8, seed=1)
    n = len(pair_of)
    swapped = {p: pairs.index((b, a)) for p, (a, b) in enumerate(pairs)}
    by_pair = {p: np.flatnonzero(pair_of == p) for p in range(len(pairs))}
    offsets = np.arange(0, 5 * n + 1, 5, dtype=np.int64)
    data = RerankData(TokenCache(states.reshape(-1, 32).astype(np.float16), offsets),
                      torch.from_numpy(patches.astype(np.float16)), np.arange(n))
    data.neg_img = np.stack([by_pair[swapped[pair_of[i]]][:4] for i in range(n)])  # the mirrored scenes
    data.neg_cap = data.neg_img.copy()  # one caption per scene: the mirrored scenes' captions
    cfg = RerankConfig(arch=arch, dim=32, layers=2, heads=4, ffn=64, dropout=0.0, epochs=30, batch_size=32,
                       lr=3e-3, warmup_steps=20, hard_fraction=0.7, captions_per_image=1, seed=0)
    state, _ = train_rerank(data, None, cfg)
    model = build_fusion(cfg, patch_dim=16, text_dim=32).eval()
    model.load_state_dict(state)

    # fresh scenes (new positions and noise), each against its own caption and the swapped-role caption
    _, test_pair, test_states, test_patches = _scenes(per_pair=3, seed=99)
    caption = {pair_of[i]: states[i] for i in range(n)}
    with torch.no_grad():
        p = torch.from_numpy(test_patches).float()
        mask = torch.ones(len(p), 5, dtype=torch.long)
        right = model(torch.from_numpy(np.stack([caption[q] for q in test_pair])).float(), mask, p)
        wrong = model(torch.from_numpy(np.stack([caption[swapped[q]] for q in test_pair])).float(), mask, p)
    accuracy = (right > wrong).float().mean().item()
    print(f"matching caption outscores the swapped one on {accuracy:.0%} of fresh scenes")
    assert accuracy >= 0.9


def test_token_states_batch_texts_by_length_but_keep_each_texts_own_states_in_order():
    from xmodal.engine.training.rerank_data import token_states

    class Chars:  # tokenizer: one token per character, padded to the batch's longest
        def __call__(self, texts, max_length):
            t = max(len(x) for x in texts)
            ids = torch.tensor([[ord(c) for c in x] + [0] * (t - len(x)) for x in texts])
            return ids, (ids > 0).long()

    class Tower(torch.nn.Module):  # token states that depend on the token and on the padded batch width
        width = 2

        def forward(self, ids, mask):
            return torch.stack([ids.float(), torch.full_like(ids, ids.shape[1]).float()], -1)

    texts = ["ccc", "a", "bbbbb", "dd"]
    states, offsets = token_states(Chars(), Tower(), texts, batch_size=2)
    assert offsets.tolist() == [0, 3, 4, 9, 11]
    for text, (s, e) in zip(texts, zip(offsets[:-1], offsets[1:])):
        assert states[s:e, 0].tolist() == [ord(c) for c in text]
    # batches were ("a", "dd") and ("ccc", "bbbbb"): sorted by length, so "a" was padded to 2, not 5
    assert states[offsets[1]:offsets[2], 1].tolist() == [2.0]
