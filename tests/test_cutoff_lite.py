"""The shipped calibration with the real lite model and reranker: hits of a lite library carry a probability,
and a cutoff nobody passes leaves stdout empty and says how close the best hit came."""
from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from conftest import SAMPLES
from xmodal.engine.cli.main import cli
from xmodal.engine.search.calibration import CALIBRATION_FILE
from xmodal.indexer.models.patch_projector import LITE_RERANK
from xmodal.indexer.resources import data_file

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not LITE_RERANK.exists() or not data_file(CALIBRATION_FILE).exists(),
                                                   reason="no data/lite-rerank.pt or data/lite-calibration.json")]


@pytest.fixture(scope="module")
def lite_library(tmp_path_factory):
    root = tmp_path_factory.mktemp("lite")
    shutil.copytree(SAMPLES, root / "photos")
    result = CliRunner().invoke(cli, ["index", str(root / "photos"), "--library", str(root / "library")])
    assert result.exit_code == 0, result.output
    return root / "library"


def test_reranked_and_tail_hits_of_a_lite_library_carry_a_probability(lite_library):
    result = CliRunner().invoke(cli, ["search", "a cat", "-k", "20", "--library", str(lite_library), "--json"])

    hits = json.loads(result.stdout)
    assert result.exit_code == 0 and hits
    assert all(0.0 <= h["prob"] <= 1.0 for h in hits)
    assert hits[0]["path"].endswith("cat-chelsea.jpg")


def test_a_cutoff_no_hit_passes_prints_nothing_and_the_best_probability_on_stderr(lite_library):
    result = CliRunner().invoke(cli, ["search", "a cat", "--min-prob", "1", "--library", str(lite_library)])

    assert result.exit_code == 0 and result.stdout == ""
    assert "nothing matched well: the best hit's probability of a match was" in result.stderr
