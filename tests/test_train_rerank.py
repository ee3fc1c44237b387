"""`xmodal train rerank` end to end on a tiny dataset drawn at test time (the lite towers, real): it trains
on fewer photos than it mines neighbours from and reranks, and a refit keeps the matcher's weights while
reading no train token states."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from xmodal.engine.cli.main import cli
from xmodal.indexer.resources import data_file

pytestmark = pytest.mark.slow


def _rerank(root: Path, out: Path, cache: Path, *extra: str) -> dict:
    result = CliRunner().invoke(cli, ["train", "rerank", "--data", str(root), "--out", str(out), "--cache-dir",
                                      str(cache), "--json", *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_training_on_fewer_photos_than_its_neighbour_and_rerank_depths_writes_a_checkpoint(tiny_dataset, tmp_path):
    report = _rerank(tiny_dataset, tmp_path / "r.pt", tmp_path / "cache", "--epochs", "1")
    # 8 train photos against mine_k = 16, 8 dev photos against K up to 32: every depth is clamped (this
    # raised "selected index k out of range", then a shape mismatch), and each K is reported
    assert set(report["dev"]["K"]) == {"8", "16", "32"}
    ck = torch.load(tmp_path / "r.pt", weights_only=True)
    assert ck["config"]["patches"] == 49 and ck["hub"] is not None


def test_a_refit_keeps_the_weights_and_never_computes_train_token_states(tiny_dataset, tmp_path):
    out = tmp_path / "r.pt"
    _rerank(tiny_dataset, out, tmp_path / "trained", "--epochs", "1")
    before = torch.load(out, weights_only=True)
    assert len(list((tmp_path / "trained").glob("tokens-*-train-*"))) == 1  # training reads them

    report = _rerank(tiny_dataset, out, tmp_path / "fresh", "--refit")  # a new machine: an empty cache

    assert report["refit"] is True and report["train_seconds"] < 1
    assert not list((tmp_path / "fresh").glob("tokens-*-train-*"))  # a refit never reads them
    assert len(list((tmp_path / "fresh").glob("tokens-*-dev-*"))) == 1  # dev's are scored
    after = torch.load(out, weights_only=True)
    assert after["state"].keys() == before["state"].keys()
    assert all(torch.equal(after["state"][k], before["state"][k]) for k in before["state"])


def test_the_photos_go_in_at_the_size_the_heads_checkpoint_names(tiny_dataset, tmp_path):
    """A refit onto heads whose checkpoint says 200 px embeds the photos at 200 px (new features cached), as the
    encoder will index them with those heads, not at the model's default 224; 256 px (an 8 x 8 patch map) is
    refused in one line for a refit, since the matcher was trained on 7 x 7 tokens, while a new reranker trains on
    the 8 x 8 tokens those heads give."""
    out, cache = tmp_path / "r.pt", tmp_path / "cache"
    _rerank(tiny_dataset, out, cache, "--epochs", "1")
    assert len(list(cache.glob("trunk-*-dev-*"))) == 1
    for size in (200, 256):
        heads = torch.load(data_file("lite-align.pt"), map_location="cpu", weights_only=False)
        heads["preprocess"]["size"] = size
        torch.save(heads, tmp_path / f"heads-{size}.pt")

    _rerank(tiny_dataset, out, cache, "--refit", "--heads", str(tmp_path / "heads-200.pt"))
    assert len(list(cache.glob("trunk-*-dev-*"))) == 2  # the photos again, at 200 px

    fresh = tmp_path / "r256.pt"  # a new reranker on 256-px heads trains on their 8 x 8 tokens
    _rerank(tiny_dataset, fresh, cache, "--epochs", "1", "--heads", str(tmp_path / "heads-256.pt"))
    assert torch.load(fresh, weights_only=True)["config"]["patches"] == 64

    result = CliRunner().invoke(cli, ["train", "rerank", "--data", str(tiny_dataset), "--out", str(out), "--cache-dir",
                                      str(cache), "--refit", "--heads", str(tmp_path / "heads-256.pt")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: photos at 256 px give 64 patch tokens, but this reranker was trained on 49" in result.output
