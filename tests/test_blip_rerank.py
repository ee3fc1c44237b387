"""BLIP's image-text matching head as a reranker backend, on a tiny random checkpoint saved at test time."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import hf_tiny
from xmodal.engine.rerank.blip import BlipReranker
from xmodal.indexer.models.base import ModelUnavailable


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


def test_search_reranks_with_blip_through_the_same_interface(blip_folder, library, photos, fake_encoder):
    """`xmodal search --reranker FOLDER`: BLIP's ITM probability reorders the top k (it reads the photos)."""
    import json

    from click.testing import CliRunner

    from xmodal.engine.cli.main import cli
    from xmodal.engine.search.engine import SearchEngine
    from xmodal.indexer.ingest.decode import read_image
    from xmodal.indexer.storage.library import Library
    from xmodal.indexer.ingest.pipeline import index_images, index_texts

    (photos / "captions.txt").write_text("a red square\na blue square\n")
    with Library(library, create=True) as lib:
        index_images(lib, [str(photos)], fake_encoder)
        index_texts(lib, str(photos / "captions.txt"), fake_encoder)
    with SearchEngine(library, reranker=str(blip_folder)) as eng:
        hits = eng.search_text("red", k=4, rerank_k=3, mode="semantic")
        dual = eng.search_text("red", k=4, rerank_k=0, mode="semantic")
        to_texts = eng.search_image(photos / "red.jpg", k=2, target="texts")
    assert {h.id for h in hits[:3]} == {h.id for h in dual[:3]} and hits[3].match is None
    probs = BlipReranker(str(blip_folder)).score("red", [read_image(h.path).image for h in hits[:3]])
    np.testing.assert_allclose([h.match for h in hits[:3]], probs, atol=1e-5)
    for h in hits[:3]:
        assert h.score == pytest.approx(h.similarity + 1.0 * h.match)
    assert all(h.match is not None for h in to_texts)
    out = CliRunner().invoke(cli, ["search", "red", "--mode", "semantic", "--library", str(library), "--reranker", str(blip_folder),
                                   "--rerank-k", "2", "--json"])
    assert out.exit_code == 0, out.output
    assert [("match" in h) for h in json.loads(out.stdout)] == [True, True, False, False]
    bad = CliRunner().invoke(cli, ["search", "red", "--library", str(library), "--reranker", "no/such-model"])
    assert bad.exit_code == 1 and "no/such-model" in bad.output
