"""The shipped lite model meets its targets on the Flickr8k dev split (1,000 images, 5,000 captions),
measured through the real `xmodal bench recall` command."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from xmodal.engine.cli.main import cli

pytestmark = [pytest.mark.slow, pytest.mark.data]


def test_lite_dual_encoder_reaches_the_dev_recall_targets(flickr8k):
    result = CliRunner().invoke(cli, ["bench", "recall", str(flickr8k), "--split",
                                      str(flickr8k / "splits" / "dev.txt"), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["n_images"], report["n_texts"]) == (1000, 5000)
    assert report["t2i"]["R@1"] >= 26.0
    assert report["i2t"]["R@1"] >= 32.0
    assert report["t2i"]["R@1"] <= report["t2i"]["R@5"] <= report["t2i"]["R@10"]
