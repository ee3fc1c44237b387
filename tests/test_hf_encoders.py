"""CLIP, SigLIP and Chinese-CLIP checkpoints through transformers, on tiny random models saved at test
time: xmodal's embeddings equal transformers' own, preprocessing is the checkpoint's, libraries built with
one model refuse queries from another, and a missing checkpoint fails in one line without the network."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import hf_tiny
from xmodal.engine.cli.main import cli
from xmodal.indexer.models.base import ModelUnavailable
from xmodal.indexer.models.encoders import get_encoder
from xmodal.indexer.models.clip import HFClipEncoder

MAKERS = {"clip": hf_tiny.make_clip, "siglip": hf_tiny.make_siglip, "chinese_clip": hf_tiny.make_chinese_clip}
TEXTS = {"clip": ["a dog in the snow", "a red car"], "siglip": ["a dog in the snow", "a red car"],
         "chinese_clip": ["雪地里的狗", "红色汽车"]}


@pytest.fixture(scope="module", params=sorted(MAKERS))
def checkpoint(request, tmp_path_factory):
    return request.param, MAKERS[request.param](tmp_path_factory.mktemp(request.param))


def _images():
    return [Image.new("RGB", (48, 40), c) for c in ((200, 30, 30), (30, 30, 200))]


def test_embeddings_equal_transformers_own(checkpoint):
    family, folder = checkpoint
    enc = HFClipEncoder(str(folder))
    assert enc.family == family
    import transformers

    model = getattr(transformers, {"clip": "CLIPModel", "siglip": "SiglipModel",
                                   "chinese_clip": "ChineseCLIPModel"}[family]).from_pretrained(folder).eval()
    processor_pixels = transformers.AutoImageProcessor.from_pretrained(folder)(images=_images(), return_tensors="pt")
    assert torch.equal(enc.pixel_values(_images()), processor_pixels["pixel_values"])
    assert processor_pixels["pixel_values"].shape[-1] == hf_tiny.SIZE
    tokens = enc.tokens(TEXTS[family])
    kwargs = {k: v for k, v in tokens.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    if family == "siglip":
        kwargs.pop("attention_mask")
    with torch.no_grad():
        out = model(pixel_values=processor_pixels["pixel_values"], **kwargs)
    np.testing.assert_allclose(enc.encode_images(_images()),
                               torch.nn.functional.normalize(out.image_embeds, dim=-1).numpy(), atol=1e-5)
    np.testing.assert_allclose(enc.encode_texts(TEXTS[family]),
                               torch.nn.functional.normalize(out.text_embeds, dim=-1).numpy(), atol=1e-5)
    v = enc.encode_texts(TEXTS[family])
    assert v.dtype == np.float32 and v.shape == (2, enc.dim)


def test_index_and_search_through_a_checkpoint_folder(checkpoint, tmp_path):
    family, folder = checkpoint
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, im in enumerate(_images()):
        im.save(photos / f"{i}.png")
    lib = ["--library", str(tmp_path / "lib")]
    run = CliRunner().invoke
    out = run(cli, ["index", str(photos), "--model", str(folder), "--json", *lib], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["indexed"] == 2
    hits = json.loads(run(cli, ["search", TEXTS[family][0], "--json", *lib]).stdout)
    assert len(hits) == 2
    refused = run(cli, ["search", "a dog", "--model", "lite", *lib])
    assert refused.exit_code == 1 and "built with model" in refused.output


def test_a_checkpoint_that_is_not_available_offline_fails_in_one_line():
    with pytest.raises(ModelUnavailable, match="never downloads"):
        get_encoder("openai/clip-vit-base-patch32-not-cached-here")
    out = CliRunner().invoke(cli, ["models", "--json"])
    assert out.exit_code == 0
    models = {m["name"]: m for m in json.loads(out.stdout)}
    assert models["lite"]["local"] is True and models["lite"]["dim"] == 512
    assert models["openai/clip-vit-base-patch32"]["local"] is False


def test_reindex_switches_the_library_to_another_model(tmp_path, photos, fake_encoder):
    folder = hf_tiny.make_clip(tmp_path / "clip")
    corpus = tmp_path / "texts.txt"
    corpus.write_text("a red apple\na blue sky\n")
    lib = ["--library", str(tmp_path / "lib")]
    run = CliRunner().invoke
    assert run(cli, ["index", str(photos), "--model", "fake-colour", *lib]).exit_code == 0
    assert run(cli, ["index-texts", str(corpus), *lib]).exit_code == 0
    out = run(cli, ["reindex", "--model", str(folder), "--json", *lib], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)["model"]
    assert report["model_before"] == "fake-colour" and report["images"]["indexed"] == 4 and report["texts"] == 2
    info = json.loads(run(cli, ["info", "--json", *lib]).stdout)
    assert info["model"] == str(folder) and info["images"] == 4 and info["texts"] == 2
    assert not (tmp_path / "lib.reindex").exists() and not (tmp_path / "lib.old").exists()
    assert run(cli, ["search", "--image", str(photos / "red.jpg"), "--json", *lib]).exit_code == 0


def test_a_stale_reindex_folder_for_another_model_is_discarded(tmp_path, photos, fake_encoder):
    from xmodal.indexer.storage.library import Library
    from xmodal.indexer.ingest.pipeline import index_images
    from xmodal.indexer.storage.reindex import reindex

    with Library(tmp_path / "lib", create=True) as lib:
        index_images(lib, [str(photos)], fake_encoder)
    with Library(tmp_path / "lib.reindex", create=True) as stale:
        stale.bind_model("some-other-model", 8)
    report = reindex(tmp_path / "lib", get_encoder(str(hf_tiny.make_clip(tmp_path / "clip"))))
    assert report.images.indexed == 4


def test_patch_tokens_are_the_vision_transformers_last_hidden_states(checkpoint):
    family, folder = checkpoint
    enc = HFClipEncoder(str(folder))
    patches = enc.encode_patches(_images())
    n = (hf_tiny.SIZE // 8) ** 2  # 4x4 patches of 8 pixels
    assert patches.shape == (2, n, 32)
    with torch.no_grad():
        states = enc.model.vision_model(pixel_values=enc.pixel_values(_images())).last_hidden_state
    np.testing.assert_allclose(patches, states[:, -n:].numpy(), atol=1e-6)
