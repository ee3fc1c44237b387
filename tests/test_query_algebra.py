"""The query algebra end to end (SearchEngine, `xmodal search`, the web API) with the deterministic fake
colour encoder: a photo is its mean colour, a text the colour it names. Photos that mix red and blue
stand for photos that show both concepts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import COLOURS, draw
from xmodal.engine.cli.main import cli
from xmodal.engine.search.engine import SearchEngine, SearchError
from xmodal.indexer.ingest.pipeline import index_images
from xmodal.indexer.storage.library import Library


def mixed(path: Path, red_share: float) -> Path:
    """Left part red, the rest blue: a photo with both concepts in it."""
    a = np.zeros((48, 64, 3), np.uint8)
    cut = int(round(64 * red_share))
    a[:, :cut] = COLOURS["red"]
    a[:, cut:] = COLOURS["blue"]
    Image.fromarray(a).save(path)
    return path


@pytest.fixture
def both(tmp_path, library, fake_encoder) -> Path:
    """Red, yellow (red with green, no blue), blue and green photos, and photos with both red and blue
    (mostly red, half, mostly blue)."""
    root = tmp_path / "photos"
    draw(root / "red.png", "red")
    draw(root / "yellow.png", "yellow")
    draw(root / "blue.png", "blue")
    draw(root / "green.png", "green")
    mixed(root / "mostly-red.png", 0.75)
    mixed(root / "half.png", 0.5)
    mixed(root / "mostly-blue.png", 0.25)
    with Library(library, create=True) as lib:
        index_images(lib, [str(root)], fake_encoder)
    return library


# The tests below are about the dual encoder's vector algebra (mode="semantic"): the photos' file names hold
# the colour words, which hybrid mode's keyword match would count too.
def names(hits) -> list[str]:
    return [Path(h.path).name for h in hits]


def test_excluding_a_concept_removes_photos_that_have_it_from_the_top(both):
    with SearchEngine(both) as eng:
        plain = names(eng.search_text("red", k=3, mode="semantic"))
        excluded = names(eng.search_text("red -blue", k=3, mode="semantic"))
    assert plain == ["red.png", "mostly-red.png", "half.png"]  # red alone: photos that are also blue rank high
    assert excluded[:2] == ["red.png", "yellow.png"]  # without blue: the red photos that have no blue


def test_adding_a_term_finds_photos_with_both(both):
    with SearchEngine(both) as eng:
        assert names(eng.search_text("red", k=1, mode="semantic")) == ["red.png"]
        assert names(eng.search_text("red +blue", k=1, mode="semantic")) == ["half.png"]


def test_a_weight_pulls_towards_its_term(both):
    with SearchEngine(both) as eng:
        assert names(eng.search_text("red + 3:blue", k=1, mode="semantic")) == ["mostly-blue.png"]
        assert names(eng.search_text("3:red + blue", k=1, mode="semantic")) == ["mostly-red.png"]


def test_words_added_to_a_query_photo(both, tmp_path):
    query = draw(tmp_path / "query.png", "red")
    with SearchEngine(both) as eng:
        assert names(eng.search_image(query, k=1)) == ["red.png"]
        assert names(eng.search_image(query, k=1, text="blue")) == ["half.png"]
        assert names(eng.search_image(query, k=1, text="-green")) == ["red.png"]


def test_a_query_of_exclusions_only_is_a_search_error(both):
    with SearchEngine(both) as eng, pytest.raises(SearchError, match="only excludes"):
        eng.search_text("-blue")


def test_cli_says_how_it_read_the_query_and_takes_a_photo_with_words(both, tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["search", "red -blue", "-k", "1", "--library", str(both), "--json"])
    assert r.exit_code == 0, r.output
    assert Path(json.loads(r.stdout)[0]["path"]).name == "red.png"
    assert "searching for: red, without blue" in r.stderr
    query = draw(tmp_path / "query.png", "red")
    r = runner.invoke(cli, ["search", "--image", str(query), "blue", "-k", "1", "--library", str(both), "--json"])
    assert r.exit_code == 0, r.output
    assert Path(json.loads(r.stdout)[0]["path"]).name == "half.png"
    r = runner.invoke(cli, ["search", "--library", str(both), "--", "-blue"])  # `--`: a query that starts with -
    assert r.exit_code == 1 and "only excludes" in r.output


def test_web_search_answers_the_parsed_query(both, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from xmodal.engine.web.server import create_app

    with TestClient(create_app(both, allowed_hosts=("testserver",))) as client:
        r = client.get("/api/search", params={"q": "red -blue", "k": 1})
        assert r.status_code == 200
        assert r.json()["parsed"] == {"terms": [{"text": "red", "weight": 1.0}, {"text": "blue", "weight": -1.0}],
                                      "text": "red, without blue"}
        assert Path(r.json()["hits"][0]["path"]).name == "red.png"
        bad = client.get("/api/search", params={"q": "-blue"})
        assert bad.status_code == 400 and "only excludes" in bad.json()["detail"]
        png = (tmp_path / "q.png")
        draw(png, "red")
        r = client.post("/api/search/image", params={"q": "blue", "k": 1}, files={"file": ("q.png", png.read_bytes())})
        assert r.status_code == 200, r.text
        assert r.json()["parsed"]["text"] == "blue" and Path(r.json()["hits"][0]["path"]).name == "half.png"


def _id(eng: SearchEngine, name: str) -> int:
    return next(s.id for s in eng.library.store.image_states() if Path(s.path).name == name)


def test_words_added_to_more_like_this(both):
    """similar(text=): the indexed photo's vector plus the words', as for a query photo."""
    with SearchEngine(both) as eng:
        red = _id(eng, "red.png")
        assert names(eng.similar(red, k=1, exclude_self=True)) == ["mostly-red.png"]  # most red, though blue too
        assert names(eng.similar(red, k=1, exclude_self=True, text="-blue")) == ["yellow.png"]  # red with no blue
        assert names(eng.similar(red, k=1, exclude_self=True, text="blue")) == ["half.png"]
        assert names(eng.similar(red, k=1, exclude_self=True, text="3:blue")) == ["mostly-blue.png"]
        with pytest.raises(SearchError, match="must be above 0"):
            eng.similar(red, k=1, text="200:blue")


def test_web_more_like_this_takes_words(both):
    """GET /api/images/{id}/similar?q=: the words change the ranking, the answer says how they were read, and
    a query the algebra cannot use is a 400 with its message."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from xmodal.engine.web.server import create_app

    with TestClient(create_app(both, allowed_hosts=("testserver",))) as client:
        red = _id(client.app.state.engine, "red.png")
        plain = client.get(f"/api/images/{red}/similar", params={"k": 1})
        assert plain.status_code == 200 and plain.json()["parsed"] is None
        assert Path(plain.json()["hits"][0]["path"]).name == "mostly-red.png"
        r = client.get(f"/api/images/{red}/similar", params={"k": 1, "q": "-blue"})
        assert r.status_code == 200, r.text
        assert r.json()["parsed"] == {"terms": [{"text": "blue", "weight": -1.0}], "text": "without blue"}
        assert Path(r.json()["hits"][0]["path"]).name == "yellow.png"
        r = client.get(f"/api/images/{red}/similar", params={"k": 1, "q": "3:blue"})
        assert [Path(h["path"]).name for h in r.json()["hits"]] == ["mostly-blue.png"]
        assert r.json()["parsed"]["text"] == "blue (x3)"
        assert client.get(f"/api/images/{red}/similar", params={"q": "  "}).json()["parsed"] is None
        bad = client.get(f"/api/images/{red}/similar", params={"q": "200:blue"})
        assert bad.status_code == 400 and "must be above 0" in bad.json()["detail"]
        assert client.get("/api/images/999999/similar", params={"q": "200:blue"}).status_code == 404
        long = client.get(f"/api/images/{red}/similar", params={"q": "blue " * 300})
        assert long.status_code == 400


def test_cli_more_like_an_indexed_photo_with_words(both):
    with SearchEngine(both) as eng:
        red = _id(eng, "red.png")
    runner = CliRunner()
    base = ["search", "--like", str(red), "-k", "1", "--library", str(both), "--json"]
    r = runner.invoke(cli, base)
    assert r.exit_code == 0, r.output
    assert [Path(h["path"]).name for h in json.loads(r.stdout)] == ["mostly-red.png"]  # the photo itself left out
    r = runner.invoke(cli, base + ["--", "-blue"])
    assert r.exit_code == 0, r.output
    assert [Path(h["path"]).name for h in json.loads(r.stdout)] == ["yellow.png"]
    assert f"searching for: photo {red}, without blue" in r.stderr
    r = runner.invoke(cli, base + ["200:blue"])
    assert r.exit_code == 1 and "must be above 0" in r.output
    r = runner.invoke(cli, ["search", "--like", "999999", "--library", str(both)])
    assert r.exit_code == 1 and "no image with id 999999" in r.output
    query = draw(both.parent / "q.png", "red")
    r = runner.invoke(cli, ["search", "--like", str(red), "--image", str(query), "--library", str(both)])
    assert r.exit_code == 2 and "--like ID" in r.output
