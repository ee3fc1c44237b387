"""OCR at index time and keyword search end to end: made-up words printed by Pillow on real photos (the
shipped samples) are read by the real OCR model, found top-1 by the word, on the API, the CLI and the web
API; file names are found by their words; the library keeps OCR on; one photo's OCR failure is reported
and never stops the run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFont

from conftest import SAMPLES, draw
from xmodal.engine.cli.main import cli
from xmodal.engine.search.engine import SearchEngine, SearchError
from xmodal.indexer.api import index_folders

pytest.importorskip("rapidocr_onnxruntime")
FONT = "DejaVuSans-Bold.ttf"


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.truetype(FONT, size)
    except OSError:  # no DejaVu on this machine: Pillow's own scalable font
        return ImageFont.load_default(size)


def printed(photo: Path, word: str, out: Path, size: int = 48, angle: float = 0.0) -> Path:
    """`photo` at 640 px wide with `word` printed across it (white, black outline), turned by `angle`."""
    im = Image.open(photo).convert("RGB")
    im = im.resize((640, round(640 * im.height / im.width)))
    layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
    ImageDraw.Draw(layer).text((im.width // 2, im.height // 2), word, font=font(size), fill="white", anchor="mm",
                               stroke_width=max(1, size // 16), stroke_fill="black")
    im.paste(layer.rotate(angle, center=(im.width // 2, im.height // 2)), (0, 0), layer.rotate(angle))
    out.parent.mkdir(parents=True, exist_ok=True)
    im.save(out, quality=92)
    return out


@pytest.fixture
def printed_photos(tmp_path):
    root = tmp_path / "photos"
    printed(SAMPLES / "grass.jpg", "ZORVIK", root / "a.jpg", size=56)
    printed(SAMPLES / "coffee-cup.jpg", "Quimbly", root / "b.jpg", size=40, angle=8)
    printed(SAMPLES / "astronaut.jpg", "FLONTRA 42", root / "c.jpg", size=32, angle=-5)
    shutil.copy(SAMPLES / "cat-chelsea.jpg", root / "grandma_birthday_party.jpg")
    shutil.copy(SAMPLES / "rocket-launch.jpg", root / "Tromsø aurora trip.jpg")
    return root


def names(hits) -> list[str]:
    return [Path(h.path).name for h in hits]


def test_printed_made_up_words_and_named_files_are_found_top_1(printed_photos, library, fake_encoder):
    report = index_folders(library, [printed_photos], fake_encoder, ocr=True)
    assert report.ocr_read == 5
    with SearchEngine(library, reranker=None) as eng:
        for query, expected in [("zorvik", "a.jpg"), ("QUIMBLY", "b.jpg"), ("flontra", "c.jpg"),
                                ("grandma birthday", "grandma_birthday_party.jpg"),
                                ("tromso", "Tromsø aurora trip.jpg"), ("Aurora", "Tromsø aurora trip.jpg")]:
            for mode in ("hybrid", "keyword"):
                hits = eng.search_text(query, k=3, mode=mode)
                assert names(hits)[:1] == [expected], (query, mode)
        top = eng.search_text("zorvik", k=1)[0]
        assert top.matched["ocr"].upper().count("ZORVIK") == 1 and top.matched["words"] == ["zorvik"]
        assert eng.search_text("zorvik", k=1, mode="semantic")[0].matched is None
        assert eng.search_text("zorvik", k=5, mode="keyword") == eng.search_text("zorvik", k=1, mode="keyword")


def test_the_library_keeps_ocr_on_and_reads_photos_indexed_before(printed_photos, library, fake_encoder, tmp_path):
    first = tmp_path / "first"
    printed(SAMPLES / "grass.jpg", "WOBBLEFOX", first / "w.jpg")
    index_folders(library, [first], fake_encoder)  # OCR off: the name only
    with SearchEngine(library, reranker=None) as eng:
        assert eng.search_text("wobblefox", k=1, mode="keyword") == []
    assert index_folders(library, [first], fake_encoder, ocr=True).ocr_read == 1  # photos indexed before
    assert index_folders(library, [printed_photos], fake_encoder).ocr_read == 5  # the setting stays on
    assert index_folders(library, [], fake_encoder).ocr_read == 0  # read once
    with SearchEngine(library, reranker=None) as eng:
        assert names(eng.search_text("wobblefox", k=1)) == ["w.jpg"]
        assert eng.info()["ocr"] == {"on": True, "photos_read": 6}
    index_folders(library, [], fake_encoder, ocr=False)
    draw(first / "red.jpg", "red")
    assert index_folders(library, [], fake_encoder).ocr_read == 0


def test_one_photos_ocr_failure_is_reported_and_the_others_are_read(printed_photos, library, fake_encoder,
                                                                    monkeypatch):
    from xmodal.indexer.ingest import ocr

    real = ocr.RapidReader.read

    def read(self, image):  # the real reader, failing on one photo (the pass is what is tested)
        if image.width == 640 and image.getpixel((0, 0)) == Image.open(printed_photos / "b.jpg").getpixel((0, 0)):
            raise RuntimeError("model crashed")
        return real(self, image)

    monkeypatch.setattr(ocr.RapidReader, "read", read)
    report = index_folders(library, [printed_photos], fake_encoder, ocr=True)
    assert report.ocr_read == 4
    assert [s.path for s in report.skipped] == [str(printed_photos / "b.jpg")]
    assert "model crashed" in report.skipped[0].reason
    monkeypatch.undo()
    assert index_folders(library, [], fake_encoder).ocr_read == 1  # tried again


def test_the_cli_indexes_with_ocr_and_searches_by_mode_with_matched_words(printed_photos, library, fake_encoder):
    runner = CliRunner()
    out = runner.invoke(cli, ["index", str(printed_photos), "--library", str(library), "--model", "fake-colour",
                               "--ocr"])
    assert out.exit_code == 0, out.output
    assert "read the text in 5 photos" in out.output
    out = runner.invoke(cli, ["search", "zorvik", "--library", str(library), "--no-rerank", "--json", "-k", "2"])
    assert out.exit_code == 0, out.output
    hits = json.loads(out.output)
    assert Path(hits[0]["path"]).name == "a.jpg" and "ZORVIK" in hits[0]["matched"]["ocr"].upper()
    out = runner.invoke(cli, ["search", "birthday", "--library", str(library), "--no-rerank", "--mode", "keyword"])
    assert out.exit_code == 0 and "grandma_birthday_party.jpg" in out.output and "matched name:" in out.output
    out = runner.invoke(cli, ["search", "zorvik", "--library", str(library), "--mode", "fuzzy"])
    assert out.exit_code == 2 and "fuzzy" in out.output


def test_keyword_mode_for_texts_is_refused_with_a_clear_error(printed_photos, library, fake_encoder):
    index_folders(library, [printed_photos], fake_encoder)
    with SearchEngine(library, reranker=None) as eng:
        with pytest.raises(SearchError, match="keyword search finds photos only"):
            eng.search_text("zorvik", target="texts", mode="keyword")
        with pytest.raises(SearchError, match="unknown mode"):
            eng.search_text("zorvik", mode="both")


def test_the_web_api_fuses_by_mode_and_says_what_matched(printed_photos, library, fake_encoder):
    from fastapi.testclient import TestClient

    from xmodal.engine.web.server import create_app

    index_folders(library, [printed_photos], fake_encoder, ocr=True)
    with TestClient(create_app(library, allowed_hosts=("testserver",))) as client:
        r = client.get("/api/search", params={"q": "Zorvik", "mode": "keyword", "rerank_k": 0})
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert Path(hits[0]["path"]).name == "a.jpg" and hits[0]["matched"]["words"] == ["zorvik"]
        r = client.get("/api/search", params={"q": "kilimanjaro", "mode": "nonsense"})
        assert r.status_code == 400 and "unknown mode" in r.json()["detail"]
        page = client.get("/static/app.js").text
        assert "matchedLine" in page and 'id="mode"' in client.get("/").text


def test_a_reindexed_library_keeps_ocr_on_and_its_photos_text(printed_photos, library, fake_encoder):
    from xmodal.indexer.storage.reindex import reindex

    index_folders(library, [printed_photos], fake_encoder, ocr=True)
    assert reindex(library, fake_encoder).images.ocr_read == 5
    with SearchEngine(library, reranker=None) as eng:
        assert names(eng.search_text("zorvik", k=1, mode="keyword")) == ["a.jpg"]
        assert eng.library.store.get_meta("ocr") is True
