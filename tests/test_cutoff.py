"""The relevance cutoff and sort by date (engine/search/cutoff.py) from the CLI, the Python API and the web API,
on a fake-colour library given a calibration of its own (the shipped one is keyed to the lite checkpoints)."""
from __future__ import annotations

import json
import os
from datetime import datetime

import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import COLOURS, draw
from xmodal.engine.cli.main import cli
from xmodal.engine.search.calibration import FEATURES, Logistic
from xmodal.engine.search.cutoff import apply_cutoff, by_date
from xmodal.engine.search.engine import SearchEngine, SearchError
from xmodal.indexer.ingest.pipeline import index_images
from xmodal.indexer.records import ImageRecord, SearchHit
from xmodal.indexer.storage.library import Library

OLD = datetime(2010, 1, 1).timestamp()


def dated(path, colour: str, when: str | None, mtime: float = OLD):
    """A JPEG with an EXIF DateTimeOriginal (or none), and a file time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if when:
        exif.get_ifd(0x8769)[36867] = when
    Image.new("RGB", (64, 48), COLOURS[colour]).save(path, exif=exif)
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def calibrated(tmp_path, monkeypatch):
    """A calibration for the fake encoder: P(match) rises steeply with the cosine (the red photo's cosine to
    "red" is 1, the others' far below), default cutoff 0.5."""
    steep = Logistic(FEATURES["dual"], (40.0, 0.0), -36.0, (0.0, 0.0), (1.0, 1.0))
    doc = {"model": "fake-colour", "checkpoints": {}, "reranked": steep.to_json() | {"features": list(FEATURES["reranked"]),
           "coef": [40.0, 0, 0, 0, 0], "mean": [0.0] * 5, "scale": [1.0] * 5}, "dual": steep.to_json(),
           "default_cutoff": 0.5}
    (tmp_path / "cal").mkdir()
    (tmp_path / "cal" / "lite-calibration.json").write_text(json.dumps(doc))
    monkeypatch.setattr("xmodal.engine.search.calibration.data_file", lambda name: tmp_path / "cal" / name)


@pytest.fixture
def dated_library(tmp_path, library, fake_encoder):
    root = tmp_path / "photos"
    dated(root / "red-2020.jpg", "red", "2020:05:01 12:00:00")
    dated(root / "purple-2022.jpg", "purple", "2022:05:01 12:00:00")
    dated(root / "blue-undated.jpg", "blue", None, mtime=datetime(2024, 1, 1).timestamp())
    dated(root / "cyan-undated-old.jpg", "cyan", None)
    with Library(library, create=True) as lib:
        index_images(lib, [str(root)], fake_encoder)
    return library


def search(library, *args):
    return CliRunner().invoke(cli, ["search", "--library", str(library), *args])


def names(hits):
    return [os.path.basename(h["path"]) for h in hits]


def test_every_text_to_image_hit_carries_its_probability(dated_library, calibrated):
    result = search(dated_library, "red", "--json")

    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert names(hits)[0] == "red-2020.jpg" and hits[0]["prob"] > 0.9
    assert all(0 <= h["prob"] < 0.5 for h in hits[1:])


def test_cutoff_keeps_only_good_matches(dated_library, calibrated):
    assert names(json.loads(search(dated_library, "red", "--cutoff", "--json").stdout)) == ["red-2020.jpg"]
    assert len(json.loads(search(dated_library, "red", "--min-prob", "0", "--json").stdout)) == 4


@pytest.mark.parametrize("as_json, stdout", [(True, "[]\n"), (False, "")])
def test_when_nothing_passes_stdout_is_empty_stderr_says_so_with_the_best_probability_and_exit_is_0(
        dated_library, calibrated, as_json, stdout):
    result = search(dated_library, "green", "--cutoff", *(["--json"] if as_json else []))

    assert result.exit_code == 0
    assert result.stdout == stdout
    assert "nothing matched well" in result.stderr and "probability of a match was 0.0" in result.stderr


def test_sort_by_date_puts_the_newest_first_taken_date_else_file_time(dated_library, calibrated):
    hits = json.loads(search(dated_library, "red", "--sort", "date", "--json").stdout)

    assert names(hits) == ["blue-undated.jpg", "purple-2022.jpg", "red-2020.jpg", "cyan-undated-old.jpg"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    # the cutoff applies first, then the order
    assert names(json.loads(search(dated_library, "red purple", "--min-prob", "0.0001", "--sort", "date",
                                   "--json").stdout))[:2] == ["purple-2022.jpg", "red-2020.jpg"]


def test_the_python_api_takes_min_prob_and_sort(dated_library, calibrated):
    with SearchEngine(dated_library) as engine:
        assert [h.id for h in engine.search_text("red", 4, min_prob=0.5)] == [engine.search_text("red", 1)[0].id]
        cut = engine.refine(engine.search_text("green", 4), engine.default_cutoff)
        assert cut.hits == [] and cut.dropped == 4 and 0 <= cut.best_prob < 0.5
        with pytest.raises(SearchError, match="unknown sort"):
            engine.search_text("red", sort="size")


def test_a_cutoff_on_a_library_without_a_calibrated_model_is_a_clear_error(dated_library):
    result = search(dated_library, "red", "--cutoff")

    assert result.exit_code == 1 and "a cutoff needs the lite model" in result.stderr
    assert "prob" not in json.loads(search(dated_library, "red", "--json").stdout)[0]


def test_a_cutoff_on_texts_or_a_photo_query_is_refused(dated_library, calibrated, tmp_path):
    query = draw(tmp_path / "q.jpg", "red")
    result = search(dated_library, "--image", str(query), "--min-prob", "0.5")

    assert result.exit_code == 1 and "text -> image searches" in result.stderr


def test_the_web_api_cuts_sorts_and_says_how_close_the_best_hit_came(dated_library, calibrated):
    from fastapi.testclient import TestClient

    from xmodal.engine.web.server import create_app

    with TestClient(create_app(dated_library, allowed_hosts=("testserver",))) as client:
        good = client.get("/api/search", params={"q": "red", "cutoff": "true"}).json()
        none = client.get("/api/search", params={"q": "green", "cutoff": "true"}).json()
        by_date_ = client.get("/api/search", params={"q": "red", "sort": "date"}).json()
        bad = client.get("/api/search", params={"q": "red", "sort": "size"})
        out_of_range = client.get("/api/search", params={"q": "red", "min_prob": "2"})

    assert names(good["hits"]) == ["red-2020.jpg"] and good["cutoff"]["dropped"] == 3
    assert none["hits"] == [] and none["cutoff"]["min_prob"] == 0.5 and none["cutoff"]["best_prob"] < 0.5
    assert names(by_date_["hits"])[0] == "blue-undated.jpg"
    assert bad.status_code == 400 and "unknown sort" in bad.json()["detail"]
    assert out_of_range.status_code == 400 and "min_prob" in out_of_range.text


def test_apply_cutoff_and_by_date_are_pure():
    hits = [SearchHit(1, 0.9, 1, "a", prob=0.8), SearchHit(2, 0.8, 2, "b", prob=0.2), SearchHit(3, 0.7, 3, "c")]
    cut = apply_cutoff(hits, 0.5)
    assert [h.id for h in cut.hits] == [1] and cut.dropped == 2 and cut.best_prob == 0.8
    assert apply_cutoff(hits, None).hits == hits

    def rec(i, taken, mtime):
        return ImageRecord(i, f"/p/{i}", 1, mtime, "", 1, 1, taken, "m")

    records = {1: rec(1, None, 100.0), 2: rec(2, datetime(2001, 1, 1), 0.0)}
    assert [h.id for h in by_date(hits, records)] == [2, 1, 3]  # 3 has no record: last
