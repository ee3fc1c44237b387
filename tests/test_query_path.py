"""Searches without torch: the lite model's text and image paths and the reranker's matcher run on ONNX
Runtime graphs exported from the torch modules (indexer/models/lite_query.py, engine/rerank/session.py),
with the torch path's outputs, and a search process never imports torch."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLES
from xmodal.engine.rerank.banks import TextTokens
from xmodal.engine.rerank.lite import Reranker
from xmodal.engine.rerank.session import CachedReranker, RerankSession, load_scorer
from xmodal.engine.search.engine import SearchEngine
from xmodal.indexer.ingest.pipeline import index_images, index_texts
from xmodal.indexer.models.encoders import get_encoder, get_query_encoder
from xmodal.indexer.models.lite_query import LiteQueryEncoder, read_manifest
from xmodal.indexer.models.patch_projector import LITE_RERANK, default_projector
from xmodal.indexer.storage.library import Library

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not LITE_RERANK.exists(), reason="no data/lite-rerank.pt")]
PHOTOS = sorted(p for p in SAMPLES.iterdir() if p.suffix in (".jpg", ".png"))
TEXTS = ["a tabby cat lying on a blanket", "a rocket lifting off at night", "a cup of coffee on a table",
         "two dogs run through deep snow, chasing a red ball"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cache folder: the graphs are exported into it by the tests that need them."""
    folder = tmp_path_factory.mktemp("xdg-cache")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="module")
def onnx_encoder(cache) -> LiteQueryEncoder:
    get_encoder("lite").export_query_graphs()
    manifest = read_manifest()
    assert manifest is not None
    return LiteQueryEncoder(manifest)


@pytest.fixture(scope="module")
def lite_library(tmp_path_factory, cache):
    root = tmp_path_factory.mktemp("lite") / "library"
    photos = root.parent / "photos"
    shutil.copytree(SAMPLES, photos)
    (photos / "LICENSE.md").unlink()
    encoder = get_encoder("lite")
    with Library(root, create=True) as lib:
        index_images(lib, [str(photos)], encoder, patches=default_projector("lite"))
        index_texts(lib, str(photos / "captions.txt"), encoder, tokens=True)
    return root


def _at_model_size(paths, size=224):
    """Photos already at the model's input size: both paths then see the same pixels (no resize)."""
    return [Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BICUBIC) for p in paths]


def test_the_query_encoder_and_the_indexer_name_the_same_weights_revision(onnx_encoder, lite_library):
    """A search compares the library's recorded revision with its query encoder's (indexer.storage.revision):
    the ONNX query path must name the revision the torch indexer recorded, or every lite library is refused."""
    from xmodal.indexer.storage.revision import recorded_revision

    assert onnx_encoder.revision == get_encoder("lite").revision and len(onnx_encoder.revision) == 16
    with Library(lite_library) as lib:
        assert recorded_revision(lib) == onnx_encoder.revision


def test_the_onnx_text_path_gives_the_torch_embeddings_and_token_states(onnx_encoder):
    torch_enc = get_encoder("lite")
    np.testing.assert_allclose(onnx_encoder.encode_texts(TEXTS), torch_enc.encode_texts(TEXTS), atol=1e-4)
    v1, s1, m1, i1 = onnx_encoder.encode_text_states(TEXTS)
    v2, s2, m2, i2 = torch_enc.encode_text_states(TEXTS)
    np.testing.assert_array_equal(np.asarray(i1), np.asarray(i2))
    np.testing.assert_array_equal(np.asarray(m1), np.asarray(m2))
    np.testing.assert_allclose(s1, np.asarray(s2), atol=1e-4)
    np.testing.assert_allclose(v1, v2, atol=1e-4)


def test_the_onnx_image_path_gives_the_torch_embeddings_and_patch_tokens(onnx_encoder, monkeypatch):
    monkeypatch.setenv("XMODAL_IMAGE_RUNTIME", "torch")  # the reference: the torch modules themselves
    from xmodal.indexer.models.lite_encoder import LiteEncoder

    torch_enc = LiteEncoder()
    photos = _at_model_size(PHOTOS[:3])
    e1, p1 = onnx_encoder.encode_images_with_patches(photos)
    e2, p2 = torch_enc.encode_images_with_patches(photos)
    np.testing.assert_allclose(e1, e2, atol=1e-4)
    np.testing.assert_allclose(p1, p2, atol=1e-3, rtol=1e-4)


def test_the_onnx_matcher_and_banks_give_the_torch_rerankers_scores(cache):
    session = load_scorer()
    assert isinstance(session, RerankSession) and CachedReranker.of(LITE_RERANK).complete()
    torch_rr = Reranker()
    rng = np.random.default_rng(0)
    states = rng.standard_normal((3, 7, 384)).astype(np.float32)
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    patches = rng.standard_normal((5, 49, torch_rr.patch_dim)).astype(np.float32)
    text = TextTokens(states[:1], mask[:1])
    np.testing.assert_allclose(session.score(text, patches), torch_rr.score(text, patches), atol=1e-4)
    np.testing.assert_allclose(session.score(patches[0], TextTokens(states, mask)),
                               torch_rr.score(patches[0], TextTokens(states, mask)), atol=1e-4)
    vectors = rng.standard_normal((4, torch_rr.hub["texts"].shape[1])).astype(np.float32)
    for direction in ("t2i", "i2t"):
        np.testing.assert_allclose(session.hub_prior(vectors, direction), torch_rr.hub_prior(vectors, direction))
    np.testing.assert_allclose(session.exemplar_scores(text, vectors), torch_rr.exemplar_scores(text, vectors))
    assert (session.alpha, session.beta) == (torch_rr.alpha, torch_rr.beta)


def test_searches_rank_the_same_on_onnx_as_on_torch(lite_library, onnx_encoder, monkeypatch):
    queries = {"t2i": lambda e: e.search_text("a cat sitting on a wooden floor", k=9),
               "i2t": lambda e: e.search_image(PHOTOS[0], k=5, target="texts"),
               "similar": lambda e: e.similar(1, k=5, target="texts")}
    results = {}
    for runtime in ("torch", "onnx"):
        monkeypatch.setenv("XMODAL_QUERY_RUNTIME", runtime)
        from xmodal.indexer.models import encoders

        encoders._QUERY_CACHE.clear()
        with SearchEngine(lite_library) as eng:
            results[runtime] = {name: q(eng) for name, q in queries.items()}
            kind = type(eng.encoder).__name__, type(eng.reranker.reranker).__name__
        assert kind == (("LiteEncoder", "Reranker") if runtime == "torch" else ("LiteQueryEncoder", "RerankSession"))
    for name in queries:
        a, b = results["torch"][name], results["onnx"][name]
        assert [h.id for h in a] == [h.id for h in b], name
        if name != "i2t":  # a query photo is resized by Pillow without torch (pixels within a level)
            np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-4)
        else:
            np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=2e-2)


def _spins(ort_session) -> bool:
    """Whether an ONNX Runtime session's threads spin after a run (ORT's default: no config entry)."""
    try:
        return ort_session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") != "0"
    except Exception:  # noqa: BLE001 - onnxruntime raises a plain error for an entry never set
        return True


def test_query_sessions_sleep_after_a_run_so_numpy_and_faiss_get_the_cores(onnx_encoder, cache):
    # a query alternates ONNX Runtime with numpy (hubness priors, exemplar term) and FAISS: spinning threads
    # would take the cores they need (benchmarks/query_spinning.py: warm text queries 1.9-2.7x slower on 2 cores)
    assert not _spins(onnx_encoder.text_path.session)
    assert not _spins(load_scorer().session)
    image_path = onnx_encoder.image_path
    assert not _spins(image_path.session)


def test_the_text_graph_is_saved_fused_and_loaded_without_optimising_again(onnx_encoder):
    """Graph optimisation runs once, at export (onnx_runtime.save_optimized): the cached graph holds ONNX
    Runtime's fused operators (no layout changes, so it suits any CPU) and the query session loads it as it is."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(onnx_encoder.text_path.path), load_external_data=False).graph
    fused = {n.op_type for n in graph.node if n.domain == "com.microsoft"}
    assert fused, "the saved text graph holds no fused operator"
    opts = onnx_encoder.text_path.session.get_session_options()
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def _prepacks(ort_session) -> bool:
    try:
        return ort_session.get_session_options().get_session_config_entry("session.disable_prepacking") != "1"
    except Exception:  # noqa: BLE001 - an entry never set: the default, prepacking
        return True


def test_one_shot_sessions_skip_prepacking_give_the_same_vectors_and_the_setting_ends_with_the_block(onnx_encoder):
    """`xmodal search QUERY` makes its sessions inside onnx_runtime.one_shot(): no weight prepacking at load
    (base's text graph: ~0.06 s instead of ~0.9 s), the same vectors; a server's sessions keep prepacking."""
    from xmodal.indexer.models.onnx_runtime import OnnxTextPath, one_shot

    with one_shot():
        quick = OnnxTextPath(onnx_encoder.text_path.path, optimized=True)
    later = OnnxTextPath(onnx_encoder.text_path.path, optimized=True)
    assert not _prepacks(quick.session) and _prepacks(later.session) and _prepacks(onnx_encoder.text_path.session)
    ids, mask = onnx_encoder.tokenizer.arrays(TEXTS, max_length=64)
    np.testing.assert_allclose(quick(ids, mask)[0], later(ids, mask)[0], atol=1e-5)


def test_a_search_process_never_imports_torch(lite_library, onnx_encoder, cache):
    load_scorer()  # the reranker's graph and banks are in the cache
    script = f"""
import json, sys
from xmodal.engine.search.engine import SearchEngine
with SearchEngine({str(lite_library)!r}) as eng:
    t2i = eng.search_text("a cat", k=3)
    i2t = eng.search_image({str(PHOTOS[0])!r}, k=3, target="texts")
    i2i = eng.search_image({str(PHOTOS[0])!r}, k=3)
print(json.dumps({{"torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules,
                  "reranked": [h.match is not None for h in t2i + i2t], "t2i": [h.path for h in t2i]}}))
"""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["torch"] is False and got["transformers"] is False
    assert all(got["reranked"])
    assert "cat" in got["t2i"][0]


def test_a_model_without_a_query_form_is_searched_with_its_registered_encoder():
    from fake_encoders import ColourEncoder
    from xmodal.indexer.models.encoders import register_encoder

    mine = ColourEncoder()
    register_encoder("fake-colour-query", lambda: mine)
    assert get_query_encoder("fake-colour-query") is mine


def test_xmodal_info_loads_no_model(photos, library, fake_encoder):
    from xmodal.indexer.api import index_folders

    index_folders(library, [str(photos)], fake_encoder)
    script = f"""
import sys
from xmodal.engine.cli.main import main
sys.argv = ["xmodal", "info", "--library", {str(library)!r}, "--json"]
try:
    main()
except SystemExit:
    pass
print("loaded:", sorted(m for m in ("torch", "onnxruntime", "tokenizers", "transformers") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '"images": 4' in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "loaded: []"
