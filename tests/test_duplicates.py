"""Duplicate photos (engine/duplicates, `xmodal duplicates`, /api/duplicates) on photos drawn at test time:
textured photos with edited copies, exact copies, a burst, blanks and distinct photos, indexed with the
fake colour encoder (its vectors put every photo of one tint near the others, so only the pixel
confirmation tells copies from different photos)."""
from __future__ import annotations

import json
import os
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageEnhance

from xmodal.engine.cli.main import cli
from xmodal.engine.duplicates.confirm import DEFAULT_THRESHOLD, fingerprint, pair_score
from xmodal.engine.duplicates.groups import Member, choose_keep, connected_groups
from xmodal.engine.search.engine import SearchEngine, SearchError
from xmodal.indexer.ingest.pipeline import index_images
from xmodal.indexer.storage.library import Library

TINTS = {"a": (200, 80, 60), "b": (60, 180, 80), "c": (70, 90, 200), "d": (200, 70, 60), "e": (190, 80, 70)}


def texture(seed: int, tint, size=(160, 120)) -> Image.Image:
    """A smooth random photo-like picture around a tint (blobs of a few pixels' worth of detail)."""
    rng = np.random.default_rng(seed)
    small = rng.normal(0, 60, (9, 12, 3)) + np.array(tint)
    im = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize(size, Image.BICUBIC)
    return im


def save(im: Image.Image, path: Path, when: int, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    os.utime(path, (when, when))
    return path


@pytest.fixture
def dup_library(tmp_path, library, fake_encoder) -> Path:
    root = tmp_path / "photos"
    a = texture(1, TINTS["a"])
    save(a, root / "a.jpg", 1_600_000_000, quality=95)  # the original: oldest
    save(a, root / "a-q30.jpg", 1_650_000_000, quality=30)
    save(ImageEnhance.Brightness(a).enhance(1.2), root / "a-bright.jpg", 1_650_000_000, quality=90)
    save(a.crop((4, 3, 156, 117)), root / "a-crop.jpg", 1_650_000_000, quality=90)
    save(a.resize((80, 60)), root / "a-small.png", 1_650_000_000)
    b = texture(2, TINTS["b"])
    save(b, root / "b.jpg", 1_600_000_000, quality=90)
    (root / "copies").mkdir()
    shutil.copyfile(root / "b.jpg", root / "copies" / "b.jpg")
    c = texture(3, TINTS["c"], size=(230, 120))
    save(c.crop((0, 0, 160, 120)), root / "c-burst1.jpg", 1_600_000_000, quality=90)  # two frames, 60% overlap
    save(c.crop((64, 0, 224, 120)), root / "c-burst2.jpg", 1_600_000_000, quality=90)
    save(texture(4, TINTS["d"]), root / "d.jpg", 1_600_000_000, quality=90)  # distinct photos of a's tint
    save(texture(5, TINTS["e"]), root / "e.jpg", 1_600_000_000, quality=90)
    save(Image.new("RGB", (160, 120), (128, 128, 128)), root / "grey1.png", 1_600_000_000)  # blanks
    save(Image.new("RGB", (160, 120), (131, 129, 127)), root / "grey2.png", 1_600_000_000)
    with Library(library, create=True) as lib:
        index_images(lib, [str(root)], fake_encoder)
    return library


def by_name(report) -> dict[str, list[str]]:
    """{kind: [sorted names of each group, joined]}"""
    out: dict[str, list[str]] = {}
    for g in report.groups:
        out.setdefault(g.kind, []).append(" ".join(sorted(Path(p).name for p in g.paths)))
    return out


def test_edited_copies_group_and_exact_copies_group_but_bursts_blanks_and_others_do_not(dup_library):
    with SearchEngine(dup_library) as eng:
        report = eng.find_duplicates()
    groups = by_name(report)
    assert groups["near"] == ["a-bright.jpg a-crop.jpg a-q30.jpg a-small.png a.jpg"]
    assert groups["exact"] == ["b.jpg b.jpg"]
    assert report.candidates > report.confirmed  # the embedding alone proposed pairs the pixels turned down
    assert report.skipped == []


def test_the_keep_suggestion_is_the_largest_then_the_oldest_and_says_why(dup_library):
    with SearchEngine(dup_library) as eng:
        near = [g for g in eng.find_duplicates().groups if g.kind == "near"][0]
    kept = next(m for m in near.members if m.id == near.keep)
    assert Path(kept.path).name == "a.jpg"  # 160x120 like the q30 and bright copies, and the oldest file
    assert near.why.startswith("same size (160x120); oldest")


def test_lowering_the_threshold_groups_a_burst(dup_library):
    with SearchEngine(dup_library) as eng:
        strict = by_name(eng.find_duplicates())
        loose = by_name(eng.find_duplicates(threshold=0.0))
    assert not any("c-burst" in g for g in strict.get("near", []))
    assert any("c-burst1.jpg c-burst2.jpg" in g for g in loose["near"])
    assert not any("grey" in g for g in loose["near"])  # blanks: never, whatever the threshold


def test_a_file_that_cannot_be_read_is_skipped_not_fatal(dup_library):
    with SearchEngine(dup_library) as eng:
        path = next(p for _, p, _ in eng.library.store.image_digests() if p.endswith("a-q30.jpg"))
        Path(path).write_bytes(b"not a photo any more")
        report = eng.find_duplicates()
    assert [Path(s.path).name for s in report.skipped] == ["a-q30.jpg"]
    assert by_name(report)["near"] == ["a-bright.jpg a-crop.jpg a-small.png a.jpg"]


def test_bad_threshold_is_a_search_error(dup_library):
    with SearchEngine(dup_library) as eng, pytest.raises(SearchError, match="between 0 and 1"):
        eng.find_duplicates(threshold=1.5)


def test_cli_json_lists_groups_with_keep_and_why(dup_library):
    r = CliRunner().invoke(cli, ["duplicates", "--library", str(dup_library), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    kinds = sorted(g["kind"] for g in data["groups"])
    assert kinds == ["exact", "near"]
    for g in data["groups"]:
        assert {"kind", "ids", "paths", "keep", "why"} <= set(g) and g["keep"] in g["ids"]
        assert len(g["paths"]) == len(g["ids"]) and g["why"]
    text = CliRunner().invoke(cli, ["duplicates", "--library", str(dup_library)])
    assert text.exit_code == 0 and "nothing was deleted" in text.output


def test_web_duplicates_api_and_page(dup_library):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from xmodal.engine.web.server import create_app

    with TestClient(create_app(dup_library, allowed_hosts=("testserver",))) as client:
        r = client.get("/api/duplicates")
        assert r.status_code == 200
        near = [g for g in r.json()["groups"] if g["kind"] == "near"][0]
        assert {"width", "height", "bytes", "date"} <= set(near["members"][0])
        assert client.get("/api/duplicates", params={"threshold": "2"}).status_code == 400
        assert client.get("/api/duplicates", params={"threshold": "x"}).status_code == 400
        page = client.get("/duplicates")
        assert page.status_code == 200 and "duplicates.js" in page.text
        assert 'href="/duplicates"' in client.get("/").text


# ------------------------------------------------------------------ the pure parts
def test_pixel_confirmation_scores_copies_high_and_a_burst_low():
    a = texture(7, (120, 120, 120), size=(230, 120))
    one = fingerprint(a.crop((0, 0, 160, 120)))
    copy = fingerprint(ImageEnhance.Brightness(a.crop((0, 0, 160, 120))).enhance(1.3))
    burst = fingerprint(a.crop((64, 0, 224, 120)))
    other = fingerprint(texture(8, (120, 120, 120), size=(160, 120)))
    assert pair_score(one, copy) >= DEFAULT_THRESHOLD
    assert pair_score(one, burst) < DEFAULT_THRESHOLD
    assert pair_score(one, other) < DEFAULT_THRESHOLD
    blank = fingerprint(Image.new("RGB", (50, 50), (3, 3, 3)))
    assert blank.blank and pair_score(blank, blank) == 0.0


def member(i, w, h, taken=None, mtime=0.0, sharp=None, sha="x"):
    return Member(i, f"/p/{i}.jpg", w, h, 1000, mtime, sha, taken, sharp)


def test_keep_rule_order_largest_then_oldest_then_sharpest():
    assert choose_keep([member(1, 100, 100), member(2, 200, 100)])[0] == 2
    keep, why = choose_keep([member(1, 100, 100, datetime(2020, 1, 1)), member(2, 100, 100, datetime(2019, 5, 1))])
    assert keep == 2 and "oldest: taken 2019-05-01" in why
    keep, why = choose_keep([member(1, 100, 100, sharp=5.0, sha="p"), member(2, 100, 100, sharp=9.0, sha="q")])
    assert keep == 2 and "sharpest" in why
    keep, why = choose_keep([member(3, 100, 100), member(1, 100, 100)])
    assert keep == 1 and why.endswith("same bytes; first indexed")


def test_connected_groups_join_chains():
    assert connected_groups([(1, 2), (3, 4), (2, 5)]) == [[1, 2, 5], [3, 4]]
