"""Each bundled model carries its own reranker (`towers.bundled_reranker`), and a reranker checkpoint says
the sizes it reads: base's MPNet token states are 768 wide and Lite2 at 280 px gives 9 x 9 = 81 patches.

Everything here is made at test time: a tiny random checkpoint in the lite-rerank format (text_dim 768,
patches 81), and a fake bundled model registered through the encoder registry with a temporary `BUNDLED`
entry, so the tests run without the base tower packages."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import draw
from fake_encoders import ColourEncoder
from xmodal.indexer.models import towers
from xmodal.indexer.models.encoders import register_encoder
from xmodal.indexer.models.patch_projector import LITE_RERANK, default_projector

TEXT_DIM, PATCHES, DIM = 768, 81, 8  # base's sizes; the fake model's embedding width
WITH, WITHOUT = "tiny-base", "tiny-norerank"  # fake bundled models: with a reranker of their own, and without


def tiny_checkpoint(path, arch="match", text_dim=TEXT_DIM, patches=PATCHES, model=WITH, exemplars=True):
    """A random reranker checkpoint in the lite-rerank format ("xmodal-lite-rerank/2") with the given sizes:
    matcher weights, patch PCA (1280 -> 8), alpha and beta, hubness bank (DIM-wide) and exemplar bank."""
    from xmodal.engine.rerank.lite import build_matcher

    g = torch.Generator().manual_seed(0)
    config = {"arch": arch, "dim": 16, "layers": 1, "heads": 2, "ffn": 32, "both": True, "patch_dim": 8,
              "text_dim": text_dim, "patches": patches, "model": model}
    torch.manual_seed(0)
    matcher = build_matcher(config, 8)
    with torch.no_grad():
        matcher.patch_pos.normal_(std=0.5)  # a position per patch: a wrong patch count would not load
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)  # noqa: E731
    keys = unit(30, text_dim)  # the train captions' sentence vectors in the text tower's space
    hub = {"texts": unit(40, DIM).half(), "images": unit(20, DIM).half(), "tau": 0.05,
           "exemplars": {"keys": (keys * 127).round().to(torch.int8), "scale": torch.full((30,), 1 / 127),
                         "images": torch.randint(0, 20, (30,), generator=g), "m": 3, "tau": 0.05}}
    if not exemplars:
        del hub["exemplars"]
    torch.save({"format": "xmodal-lite-rerank/2", "config": config,
                "state": {k: v.half() for k, v in matcher.state_dict().items()},
                "pca": {"mean": torch.randn(1280, generator=g), "proj": torch.randn(1280, 8, generator=g) / 40},
                "alpha": {"t2i": 0.5, "i2t": 0.3}, "beta": {"t2i": 0.1, "i2t": 0.0}, "hub": hub, "dev": {},
                "data": "synthetic"}, path)
    return path


class WideEncoder(ColourEncoder):
    """The colour encoder with a base-shaped reranker surface: 81 raw patch tokens of 1280 channels per photo
    and 768-wide token states per text."""

    def __init__(self, name):
        super().__init__()
        self.name = name

    def encode_images_with_patches(self, images, lane=None):
        vectors = self.encode_images(images)
        rng = np.random.default_rng(len(images))
        raw = rng.standard_normal((len(images), PATCHES, 1280)).astype(np.float32)
        raw += vectors[:, :1, None] * 3  # the photo's colour shows in its tokens
        return vectors, raw

    def encode_text_states(self, texts):
        vectors = self.encode_texts(texts)
        t = 1 + max((len(x.split()) for x in texts), default=0)
        states = np.zeros((len(texts), t, TEXT_DIM), np.float32)
        mask = np.zeros((len(texts), t), np.int64)
        for i, text in enumerate(texts):
            n = 1 + len(text.split())
            states[i, :n] = np.random.default_rng(n).standard_normal((n, TEXT_DIM)) + vectors[i, 0]
            mask[i, :n] = 1
        return vectors, states, mask, mask.copy()


@pytest.fixture
def bundled(tmp_path, monkeypatch):
    """Two fake bundled models: WITH carries tmp_path/tiny-base-rerank.pt, WITHOUT none; package data
    lookups of their files point into tmp_path."""
    tiny_checkpoint(tmp_path / "tiny-base-rerank.pt")
    real = towers.data_file
    monkeypatch.setattr(towers, "data_file", lambda name: tmp_path / name if name.startswith("tiny-") else real(name))
    monkeypatch.setitem(towers.BUNDLED, WITH, towers.BundledModel(WITH, "efficientnet-lite2", "all-mpnet-base-v2",
                                                                 260, "tiny-base-align.pt", "tiny-base-rerank.pt"))
    monkeypatch.setitem(towers.BUNDLED, WITHOUT, towers.BundledModel(WITHOUT, "efficientnet-lite2",
                                                                    "all-mpnet-base-v2", 260, "tiny-align.pt", ""))
    for name in (WITH, WITHOUT):
        encoder = WideEncoder(name)
        register_encoder(name, lambda e=encoder: e)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the reranker's ONNX export lands here
    return tmp_path / "tiny-base-rerank.pt"


def _index(root, model):
    from xmodal.indexer.api import index_folders, index_text_corpus

    photos = root / "photos"
    for colour in ("red", "green", "blue", "yellow", "white"):
        draw(photos / f"{colour}.jpg", colour)
    (root / "captions.txt").write_text("a red thing\na green field\na blue sky\na yellow flower\n")
    library = root / f"library-{model}"
    index_folders(library, [photos], model=model)
    index_text_corpus(library, root / "captions.txt", model=model)
    return library


# ------------------------------------------------------------------ the checkpoint's sizes

@pytest.mark.parametrize("arch", ["match", "itm"])
def test_a_768_wide_81_patch_checkpoint_loads_scores_and_agrees_with_its_onnx_graph(tmp_path, monkeypatch, arch):
    from xmodal.engine.rerank.banks import TextTokens
    from xmodal.engine.rerank.lite import Reranker
    from xmodal.engine.rerank.session import CachedReranker, RerankSession, load_scorer

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("XMODAL_QUERY_RUNTIME", raising=False)
    path = tiny_checkpoint(tmp_path / "base-rerank.pt", arch)
    rr = Reranker(path)
    assert (rr.text_dim, rr.patches, rr.name, rr.arch) == (768, 81, WITH, arch)
    assert rr.model.patch_pos.shape[0] == 81
    tokens = rr.patch_tokens(torch.randn(3, 1280, 9, 9))  # Lite2's 9 x 9 map at 280 px
    assert tokens.shape == (3, 81, 8) and rr.projector.spec.tokens == 81
    rng = np.random.default_rng(0)
    states = rng.standard_normal((3, 6, 768)).astype(np.float32)
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    text = TextTokens(states[:1], mask[:1])
    t2i = rr.score(text, tokens.numpy())
    assert t2i.shape == (3,) and np.isfinite(t2i).all()

    session = load_scorer(path)  # exported to ONNX on first use, then run without torch
    assert isinstance(session, RerankSession) and CachedReranker.of(path).complete()
    assert CachedReranker.of(path).graph.name.startswith("base-rerank-")
    assert (session.text_dim, session.patches, session.name) == (768, 81, WITH)
    np.testing.assert_allclose(session.score(text, tokens.numpy()), t2i, atol=1e-4)
    texts = TextTokens(states, mask)
    np.testing.assert_allclose(session.score(tokens[0].numpy(), texts), rr.score(tokens[0].numpy(), texts), atol=1e-4)
    vectors = rng.standard_normal((4, DIM)).astype(np.float32)
    np.testing.assert_allclose(session.exemplar_scores(text, vectors), rr.exemplar_scores(text, vectors), atol=1e-5)
    np.testing.assert_allclose(session.hub_prior(vectors, "t2i"), rr.hub_prior(vectors, "t2i"), atol=1e-6)


def test_a_checkpoint_that_names_no_sizes_is_read_with_the_lite_models(tmp_path):
    from xmodal.engine.rerank.banks import checkpoint_sizes
    from xmodal.engine.rerank.lite import Reranker

    assert checkpoint_sizes({}) == (384, 49)
    path = tiny_checkpoint(tmp_path / "r.pt", text_dim=384, patches=49, model="lite")
    ck = torch.load(path, weights_only=True)
    for key in ("text_dim", "patches", "model"):
        del ck["config"][key]
    torch.save(ck, path)
    rr = Reranker(path)
    assert (rr.text_dim, rr.patches, rr.name) == (384, 49, "lite")


# ------------------------------------------------------------------ which reranker a model gets

def test_bundled_reranker_and_the_index_time_projection_follow_the_model(bundled):
    assert towers.bundled_reranker(WITH) == bundled
    assert towers.bundled_reranker(WITHOUT) is None  # names none
    assert towers.bundled_reranker("fake-colour") is None  # not a bundled model
    assert default_projector(WITH).spec.tokens == 81
    assert default_projector(WITHOUT) is None and default_projector("fake-colour") is None
    if LITE_RERANK.exists():
        assert towers.bundled_reranker("lite") == LITE_RERANK and default_projector("lite").spec.tokens == 49


def test_a_models_library_is_reranked_with_its_own_reranker(bundled, tmp_path):
    from xmodal.engine.search.engine import SearchEngine, SearchError
    from xmodal.indexer.storage.patch_tokens import PatchStore

    library = _index(tmp_path, WITH)
    assert PatchStore(library).spec.tokens == 81  # index time stored the model's own projection
    with SearchEngine(library) as eng:  # auto
        backend = eng.reranker
        assert backend is not None and backend.name == WITH and backend.reranker.checkpoint == bundled
        hits = eng.search_text("red", k=3, mode="semantic")
        assert hits[0].path.endswith("red.jpg") and hits[0].match is not None and hits[0].prob is None
        texts = eng.search_image(str(tmp_path / "photos" / "blue.jpg"), k=2, target="texts")
        assert texts[0].match is not None  # the candidates' stored 768-wide token states were read
    with SearchEngine(library, reranker="bundled") as eng:
        assert eng.reranker.name == WITH
    with pytest.raises(SearchError, match=rf"lite model's features.*{WITH}.*--reranker bundled"):
        SearchEngine(library, reranker="lite")


def test_a_library_of_a_model_without_a_reranker_searches_without_one(bundled, tmp_path):
    from xmodal.engine.cli.main import cli
    from xmodal.engine.search.engine import SearchEngine, SearchError
    from xmodal.indexer.storage.patch_tokens import PatchStore

    library = _index(tmp_path, WITHOUT)
    assert PatchStore(library).spec is None  # no reranker: no patch tokens stored
    with SearchEngine(library) as eng:
        assert eng.reranker is None
        hits = eng.search_text("red", k=2, mode="semantic")
        assert hits[0].path.endswith("red.jpg") and hits[0].match is None and hits[0].prob is None
    with pytest.raises(SearchError, match=rf"model '{WITHOUT}' has no bundled reranker.*--no-rerank"):
        SearchEngine(library, reranker="bundled")
    result = CliRunner().invoke(cli, ["search", "red", "--library", str(library), "--json"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["search", "red", "--reranker", "bundled", "--library", str(library)])
    assert result.exit_code == 1 and f"model '{WITHOUT}' has no bundled reranker" in result.output
    result = CliRunner().invoke(cli, ["explain", "red", "1", "-o", str(tmp_path / "x.png"), "--library", str(library)])
    assert result.exit_code == 1 and "no bundled reranker" in result.output


def test_the_web_app_serves_with_the_models_own_reranker_or_refuses_one_it_lacks(bundled, tmp_path):
    from xmodal.engine.search.engine import SearchError
    from xmodal.engine.web.server import create_app

    app = create_app(_index(tmp_path, WITH))
    try:
        assert app.state.engine.reranker.name == WITH
    finally:
        app.state.engine.close()
    library = _index(tmp_path / "other", WITHOUT)
    with pytest.raises(SearchError, match=f"model '{WITHOUT}' has no bundled reranker"):
        create_app(library, reranker="bundled")
    app = create_app(library)  # auto: none, no error
    try:
        assert app.state.engine.reranker is None
    finally:
        app.state.engine.close()


def test_bench_recall_reranks_with_the_models_own_reranker(bundled, tmp_path, monkeypatch):
    from xmodal.engine.cli.main import cli
    from xmodal.engine.eval import bench

    used = []

    def fake_rerank_benchmark(ds, encoder, reranker, **kw):
        used.append((encoder.name, reranker.checkpoint))
        return {"t2i": {"R@1": 0.0}, "i2t": {"R@1": 0.0}, "n_images": 0, "n_texts": 0}

    monkeypatch.setattr(bench, "rerank_benchmark", fake_rerank_benchmark)
    data = tmp_path / "ds"
    draw(data / "images" / "a.jpg", "red")
    (data / "captions.txt").write_text("image,caption\na.jpg,a red thing\n")
    result = CliRunner().invoke(cli, ["bench", "recall", str(data), "--model", WITH, "--rerank", "--json"])
    assert result.exit_code == 0, result.output
    assert used == [(WITH, bundled)]
    result = CliRunner().invoke(cli, ["bench", "recall", str(data), "--model", WITHOUT, "--rerank", "--json"])
    assert result.exit_code == 1 and f"model '{WITHOUT}' has no bundled reranker" in result.output


def test_stored_token_states_keep_the_text_towers_width(tmp_path):
    from xmodal.indexer.storage.text_tokens import TextTokenStore

    wide = np.random.default_rng(0).standard_normal((3, TEXT_DIM)).astype(np.float16)
    TextTokenStore(tmp_path, width=TEXT_DIM).write([0], ["a dog"], [wide])
    np.testing.assert_array_equal(TextTokenStore(tmp_path, width=TEXT_DIM).read([0], ["a dog"])[0], wide)
    assert TextTokenStore(tmp_path, width=384).read([0], ["a dog"]) == [None]  # another width: missing, not misread
    with pytest.raises(ValueError, match="768"):
        TextTokenStore(tmp_path, width=384).write([1], ["a cat"], [wide])


# ------------------------------------------------------------------ the real base model, where installed

def _base_installed() -> bool:
    from xmodal.indexer.models.base import ModelUnavailable
    from xmodal.indexer.models.encoders import get_encoder

    try:
        get_encoder("base")
    except ModelUnavailable:
        return False
    return True


def test_base_without_its_heads_or_towers_says_what_is_missing_on_the_query_path_too(monkeypatch):
    from xmodal.indexer.models.base import ModelUnavailable
    from xmodal.indexer.models import encoders

    if towers.data_file("base-align.pt").exists():
        pytest.skip("base-align.pt is installed here")
    encoders._QUERY_CACHE.pop("base", None)
    with pytest.raises(ModelUnavailable, match="base model heads not found"):
        encoders.get_query_encoder("base")


@pytest.mark.slow
def test_the_real_base_model_gives_81_patches_and_768_wide_states_on_torch_and_onnx(tmp_path, monkeypatch):
    if not _base_installed():
        pytest.skip("base towers or data/base-align.pt not installed (make install-base)")
    from PIL import Image

    from conftest import SAMPLES
    from xmodal.indexer.models.encoders import get_encoder
    from xmodal.indexer.models.lite_query import LiteQueryEncoder, read_manifest

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    encoder = get_encoder("base")
    photos = [Image.open(p).convert("RGB").resize((260, 260)) for p in sorted(SAMPLES.glob("*.jpg"))[:2]]
    vectors, raw = encoder.encode_images_with_patches(photos)
    assert raw.shape == (2, 81, 1280) and encoder.patches == 81
    _, states, mask, _ = encoder.encode_text_states(["a cat on a mat", "a dog"])
    assert states.shape[-1] == 768
    encoder.export_query_graphs()
    query = LiteQueryEncoder(read_manifest(encoder.checkpoint))
    assert query.name == "base" and query.manifest["text_width"] == 768
    _, q_states, _, _ = query.encode_text_states(["a cat on a mat", "a dog"])
    np.testing.assert_allclose(q_states, states.numpy(), atol=1e-4)
    q_vectors, q_raw = query.encode_images_with_patches(photos)
    np.testing.assert_allclose(q_vectors, vectors, atol=1e-4)
    assert q_raw.shape == (2, 81, 1280)


def test_weights_that_do_not_fit_their_configs_sizes_are_refused_in_one_line(tmp_path):
    from xmodal.engine.rerank.lite import Reranker
    from xmodal.indexer.models.base import ModelUnavailable

    path = tiny_checkpoint(tmp_path / "r.pt", patches=49)  # trained for 49 patches...
    ck = torch.load(path, weights_only=True)
    ck["config"]["patches"] = 81  # ...but said to read 81
    torch.save(ck, path)
    with pytest.raises(ModelUnavailable, match=r"do not fit its config \(text_dim 768, patches 81"):
        Reranker(path)


def test_a_checkpoint_written_by_train_rerank_for_base_is_read_with_its_sizes(tmp_path):
    """`xmodal train rerank --model base` writes config model/text_dim/patches (engine.training.rerank); the
    loader reads them back: the contract between the two."""
    from xmodal.engine.rerank.lite import Reranker
    from xmodal.engine.training.rerank import RerankConfig, build_fusion, fit_pca, save_checkpoint

    cfg = RerankConfig(arch="match", dim=32, patch_dim=8, model="base", text_dim=768, patches=81)
    save_checkpoint(tmp_path / "base-rerank.pt", build_fusion(cfg, 8).state_dict(), cfg,
                    fit_pca(torch.randn(300, 1280), 8), 0.05, {}, data="synthetic")
    rr = Reranker(tmp_path / "base-rerank.pt")
    assert (rr.name, rr.text_dim, rr.patches, rr.patch_dim) == ("base", 768, 81, 8)
    tokens = rr.patch_tokens(torch.randn(2, 1280, 9, 9))
    scores = rr.score_text_to_images(torch.randn(5, 768), torch.ones(5, dtype=torch.long), tokens)
    assert scores.shape == (2,) and np.isfinite(scores).all()
