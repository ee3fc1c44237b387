"""BLIP's image-text matching head as a reranker backend, on a tiny random checkpoint saved at test time."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import hf_tiny
from engine.blip_rerank import BlipReranker
from indexer.encoders import ModelUnavailable


@pytest.fixture(scope="module")
def blip_folder(tmp_path_factory):
    return hf_tiny.make_blip_itm(tmp_path_factory.mktemp("blip"))


def test_scores_equal_blips_own_itm_probabilities(blip_folder):
    from transformers import AutoImageProcessor, AutoTokenizer, BlipForImageTextRetrieval

    images = [Image.new("RGB", (40, 30), c) for c in ((250, 0, 0), (0, 0, 250), (0, 250, 0))]
    rr = BlipReranker(str(blip_folder))
    scores = rr.score("a dog runs in the snow", images)
    model = BlipForImageTextRetrieval.from_pretrained(blip_folder).eval()
    enc = AutoTokenizer.from_pretrained(blip_folder)(["a dog runs in the snow"] * 3, return_tensors="pt", padding=True)
    pixels = AutoImageProcessor.from_pretrained(blip_folder)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels,
                    use_itm_head=True).itm_score.softmax(-1)[:, 1].numpy()
    np.testing.assert_allclose(scores, ref, atol=1e-5)
    assert scores.shape == (3,) and ((0 <= scores) & (scores <= 1)).all()
    per_text = rr.score(images[0], ["a dog", "a red car"])  # image query against texts
    assert per_text.shape == (2,)


def test_a_non_blip_checkpoint_is_refused(tmp_path):
    with pytest.raises(ModelUnavailable, match="not a BLIP checkpoint"):
        BlipReranker(str(hf_tiny.make_clip(tmp_path / "clip")))
