"""`xmodal train align` end to end on a tiny dataset drawn at test time: it caches features, trains the
heads, writes a checkpoint the lite encoder loads, and is reproducible bit for bit."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from xmodal.engine.cli.main import cli
from xmodal.indexer.models.lite_encoder import LiteEncoder

pytestmark = pytest.mark.slow


def _train(root: Path, out: Path, cache: Path) -> dict:
    result = CliRunner().invoke(cli, ["train", "align", "--data", str(root), "--out", str(out), "--cache-dir",
                                      str(cache), "--epochs", "2", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_training_writes_a_loadable_checkpoint_and_is_reproducible(tiny_dataset, tmp_path):
    first = _train(tiny_dataset, tmp_path / "a.pt", tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4  # trunk + text, train + dev
    second = _train(tiny_dataset, tmp_path / "b.pt", tmp_path / "cache")  # reuses the cached features
    assert first["dev"] == second["dev"] and len(first["history"]) == 2
    a, b = (torch.load(tmp_path / n, weights_only=True) for n in ("a.pt", "b.pt"))
    assert a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    enc = LiteEncoder(tmp_path / "a.pt")
    assert enc.encode_texts(["a red picture"]).shape == (1, a["config"]["dim"])


def test_a_missing_checkpoint_names_what_to_do(tmp_path):
    from xmodal.indexer.models.base import ModelUnavailable

    with pytest.raises(ModelUnavailable, match="xmodal train align"):
        LiteEncoder(tmp_path / "nope.pt")


def test_gem_pooling_is_the_mean_at_p1_and_leans_toward_the_strongest_patches_as_p_grows():
    from xmodal.indexer.models.lite import gem_pool

    maps = torch.tensor([[[[0.0, 1.0], [2.0, 5.0]]]])  # (1, 1, 2, 2)
    assert gem_pool(maps, 1.0).item() == pytest.approx(2.0)
    assert gem_pool(maps, 3.0).item() == pytest.approx(((1 + 8 + 125) / 4) ** (1 / 3))
    assert 2.0 < gem_pool(maps, 3.0).item() < gem_pool(maps, 8.0).item() < 5.0


def test_heads_trained_with_gem_pooling_are_run_by_the_encoder_with_gem_on_onnx_and_torch(tiny_dataset, tmp_path):
    """pool_p (base's recipe) is part of the model: the encoder pools the patch map as the heads were trained,
    in the ONNX image graph and on torch alike, not with the plain mean."""
    import numpy as np
    from PIL import Image

    from xmodal.engine.training.align import run_align
    from xmodal.indexer.models.lite import gem_pool

    run_align(tiny_dataset, out=tmp_path / "gem.pt", cache_dir=tmp_path / "cache", epochs=1, pool_p=3.0)
    enc = LiteEncoder(tmp_path / "gem.pt")
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (120, 150, 3), dtype=np.uint8)) for _ in range(2)]
    with torch.inference_mode():
        maps = enc.model.image_patches(enc._pixels(photos))
        as_trained = enc.model.embed_pooled_image(gem_pool(maps, 3.0)).numpy()
        mean_pooled = enc.model.embed_pooled_image(maps.mean((2, 3))).numpy()
    assert enc.model.pool_p == 3.0 and enc.onnx is not None
    onnx = enc.encode_images(photos)
    enc.onnx = None
    torch_path = enc.encode_images(photos)
    for got in (onnx, torch_path):
        assert np.allclose(got, as_trained, atol=1e-4)
        assert not np.allclose(got, mean_pooled, atol=1e-3)


@pytest.mark.parametrize("trial", [{"text_pool": "mean+max"},
                                   {"extra_text_tower": "all-minilm-l6-v2"}, {"text_adapter": 32},
                                   {"tune_head": 0.1}])
def test_heads_trained_with_a_trial_pooling_are_refused_not_mean_pooled(tmp_path, trial):
    from xmodal.indexer.models.base import ModelUnavailable
    from xmodal.indexer.resources import data_file

    ck = torch.load(data_file("lite-align.pt"), map_location="cpu", weights_only=True)
    ck["config"].update(trial)  # AlignConfig training trials (GeM, mean+max text) the encoder does not run
    torch.save(ck, tmp_path / "trial.pt")
    with pytest.raises(ModelUnavailable, match="training trial"):
        LiteEncoder(tmp_path / "trial.pt")


def test_the_token_adapter_trial_trains_from_plain_mean_pooling_and_is_refused_at_load(tiny_dataset, tmp_path):
    from xmodal.engine.training.align import TokenAdapter, run_align
    from xmodal.indexer.models.base import ModelUnavailable

    adapter = TokenAdapter(width=6, hidden=3)
    states = torch.randn(2, 4, 6)
    assert torch.equal(adapter(states), states)  # `up` starts at zero: the first step is plain mean pooling
    report = run_align(tiny_dataset, out=tmp_path / "adapter.pt", cache_dir=tmp_path / "cache", epochs=1,
                       text_adapter=8)
    state = torch.load(tmp_path / "adapter.pt", weights_only=True)["state"]
    assert report["config"]["text_adapter"] == 8 and "text_adapters.0.down.weight" in state
    with pytest.raises(ModelUnavailable, match="training trial"):
        LiteEncoder(tmp_path / "adapter.pt")


def test_the_head_tuning_trial_starts_from_imagenets_head_moves_it_and_is_refused_at_load(tiny_dataset, tmp_path):
    """Partly unlocking the image tower: a trainable copy of its head conv, equal to the locked one at first
    (same maps), trained with the heads, pulled back by L2-SP; the encoder refuses such heads."""
    from xmodal.engine.training.align import run_align
    from xmodal.engine.training.head_tuning import TunedHead
    from xmodal.indexer.models.base import ModelUnavailable
    from xmodal.indexer.models.towers import load_image_tower

    tower = load_image_tower("efficientnet-lite0")
    head, trunk = TunedHead(tower), torch.randn(2, tower.trunk_width, 7, 7)
    with torch.no_grad():
        assert torch.equal(head(trunk), tower.forward_head(trunk))
    assert float(head.sp_penalty()) == 0.0
    report = run_align(tiny_dataset, out=tmp_path / "tuned.pt", cache_dir=tmp_path / "cache", epochs=1,
                       tune_head=1.0, tune_head_sp=1e-3)
    state = torch.load(tmp_path / "tuned.pt", weights_only=True)["state"]
    assert report["config"]["tune_head"] == 1.0
    tuned = state["tuned_heads.0.conv.weight"].float()
    assert tuned.shape == tower._conv_head.weight.shape and not torch.allclose(tuned, tower._conv_head.weight)
    with pytest.raises(ModelUnavailable, match="training trial"):
        LiteEncoder(tmp_path / "tuned.pt")


def test_each_bundled_models_recipe_names_real_training_options_and_lite_keeps_the_defaults():
    from xmodal.engine.training.align import RECIPES, AlignConfig
    from xmodal.indexer.models.towers import BUNDLED
    from xmodal.indexer.resources import data_file

    assert set(RECIPES) == set(BUNDLED)  # `train align --model M` knows every bundled model's recipe
    for model, recipe in RECIPES.items():
        AlignConfig(**recipe)  # a misspelt option would raise here, not silently train another recipe
    assert RECIPES["lite"] == {}  # lite's shipped heads were trained with AlignConfig's defaults
    lite = torch.load(data_file(BUNDLED["lite"].heads), map_location="cpu", weights_only=True)
    assert all(lite["config"].get(k, v) == v for k, v in vars(AlignConfig()).items() if k in lite["config"])
