"""Captions of a text corpus linked to photos (schema 5): a corpus that names the photo each text describes
(`image,caption` CSV, as Flickr8k's, or JSONL with `image`) makes those texts keywords of the photo. A hit
found through one says so in `matched["captions"]`; re-indexing the corpus replaces the links, deleting the
photo drops them, editing it keeps them; an ambiguous file name links to none; older libraries migrate; and
the page marks matched words where the server says they are (so "Tromsø" is marked for "tromso")."""
from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import draw, older_schema
from xmodal.engine.cli.main import cli
from xmodal.engine.search.engine import SearchEngine, library_info
from xmodal.engine.search.keyword_search import matched_fields
from xmodal.indexer.api import index_folders, index_text_corpus
from xmodal.indexer.storage.library import Library
from xmodal.indexer.storage.store import SCHEMA_VERSION, Store
from xmodal.indexer.storage.words import word_spans

APP_JS = Path(__file__).resolve().parents[1] / "engine" / "web" / "static" / "app.js"


@pytest.fixture
def album(tmp_path: Path) -> Path:
    """Photos whose names say nothing of the made-up words their captions hold; two share a file name."""
    root = tmp_path / "album"
    draw(root / "trips" / "IMG_0001.jpg", "red")
    draw(root / "home" / "IMG_0002.jpg", "green")
    draw(root / "a" / "IMG_0003.jpg", "blue")
    draw(root / "b" / "IMG_0003.jpg", "yellow")
    return root


def corpus(path: Path, lines: list[str], header: str = "image,caption") -> Path:
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


CAPTIONS = ["IMG_0001.jpg,Boats moored at Zorvik harbour at dawn",  # by its unique file name
            "home/IMG_0002.jpg,a cat asleep by the stove",  # by its path under the library's root
            "IMG_0003.jpg,the Quimbly fountain",  # a file name two photos share: linked to none
            "elsewhere/IMG_9999.jpg,a photo the library does not have"]


def keyword_names(library: Path, query: str) -> list[str]:
    with SearchEngine(library, reranker=None) as eng:
        return [str(Path(h.path).relative_to(Path(h.path).parents[1])) for h in
                eng.search_text(query, k=5, mode="keyword")]


def test_a_caption_naming_a_photo_makes_its_words_keywords_of_that_photo(album, library, fake_encoder, tmp_path,
                                                                          caplog):
    index_folders(library, [album], fake_encoder)
    with caplog.at_level(logging.WARNING):
        report = index_text_corpus(library, corpus(tmp_path / "captions.csv", CAPTIONS), fake_encoder)
    assert (report.indexed, report.linked, report.ambiguous, report.unresolved) == (4, 2, 1, 1)
    assert "1 text(s) name a photo that is not in the library (e.g. 'elsewhere/IMG_9999.jpg')" in caplog.text
    assert "several photos share (e.g. 'IMG_0003.jpg', held by 2 photos) and are linked to none" in caplog.text

    assert keyword_names(library, "zorvik") == ["trips/IMG_0001.jpg"]
    assert keyword_names(library, "stove") == ["home/IMG_0002.jpg"]
    assert keyword_names(library, "quimbly") == []  # neither photo named IMG_0003.jpg gets it
    with SearchEngine(library, reranker=None) as eng:
        hit = eng.search_text("zorvik", k=1, mode="keyword")[0]
        assert hit.matched["captions"] == "Boats moored at Zorvik harbour at dawn"
        assert hit.matched["words"] == ["zorvik"] and hit.matched["spans"] == {"captions": [[16, 22]]}
        assert eng.search_text("zorvik", k=1)[0].path == hit.path  # hybrid too
        assert eng.info()["captions"] == {"photos": 2}


def test_reindexing_the_corpus_replaces_its_links_and_a_photo_indexed_later_is_linked_by_the_next_run(
        album, library, fake_encoder, tmp_path):
    index_folders(library, [album], fake_encoder)
    path = corpus(tmp_path / "captions.csv", CAPTIONS)
    index_text_corpus(library, path, fake_encoder)
    corpus(path, CAPTIONS[1:] + ["new/IMG_0004.jpg,a flontra kite on the beach"])  # Zorvik's line gone
    report = index_text_corpus(library, path, fake_encoder)
    assert report.replaced == 4 and report.unresolved == 2
    assert keyword_names(library, "zorvik") == []
    assert keyword_names(library, "stove") == ["home/IMG_0002.jpg"]

    draw(album / "new" / "IMG_0004.jpg", "red")
    index_folders(library, [album], fake_encoder)
    assert keyword_names(library, "flontra") == []  # links are made when the corpus is read...
    assert index_text_corpus(library, path, fake_encoder).unresolved == 1
    assert keyword_names(library, "flontra") == ["new/IMG_0004.jpg"]  # ...so the next run links it


def test_deleting_the_photo_unlinks_its_captions_and_editing_it_keeps_them(album, library, fake_encoder, tmp_path):
    index_folders(library, [album], fake_encoder)
    index_text_corpus(library, corpus(tmp_path / "captions.csv", CAPTIONS), fake_encoder)

    draw(album / "trips" / "IMG_0001.jpg", "blue")  # edited in place: embedded again under a new id
    assert index_folders(library, [album], fake_encoder).reembedded == 1
    assert keyword_names(library, "zorvik") == ["trips/IMG_0001.jpg"]

    shutil.rmtree(album / "trips")
    assert index_folders(library, [album], fake_encoder).removed == 1
    assert keyword_names(library, "zorvik") == []
    with Library(library) as lib:
        texts = lib.store.get_texts(lib.store.all_text_ids())
        assert [t.image_id is None for t in texts] == [True, False, True, True]  # the text stays, unlinked
        assert lib.store.count_captioned() == 1
        db = sqlite3.connect(lib.store.db_path)
        assert db.execute("SELECT count(*) FROM image_text WHERE captions != ''").fetchone()[0] == 1


def test_jsonl_corpora_link_by_their_image_field_and_plain_text_links_nothing(album, library, fake_encoder,
                                                                              tmp_path):
    index_folders(library, [album], fake_encoder)
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps({"text": "zorvik at night", "image": str(album / "home" / "IMG_0002.jpg")}) + "\n")
    assert index_text_corpus(library, jsonl, fake_encoder).linked == 1  # an absolute path
    (tmp_path / "plain.txt").write_text("IMG_0001.jpg quimbly\n")
    assert index_text_corpus(library, tmp_path / "plain.txt", fake_encoder).linked == 0
    assert keyword_names(library, "zorvik") == ["home/IMG_0002.jpg"] and keyword_names(library, "quimbly") == []


def test_a_schema_4_library_migrates_keeping_its_keywords_searchable(tmp_path):
    lib = tmp_path / "lib"
    with older_schema(4), Store(lib, create=True):  # the tables schema 4 made
        pass
    db = sqlite3.connect(lib / "library.db")  # and a photo with OCR text as it wrote one
    a = db.execute("INSERT INTO images (raw_path, path, size, mtime, sha256, width, height, model, indexed_at) "
                   "VALUES (?, ?, 1, 1.0, 'h', 4, 4, 'm', '2024-01-01T00:00:00')",
                   (b"/p/x/harbour.jpg", "/p/x/harbour.jpg")).lastrowid
    db.execute("INSERT INTO image_text (image_id, name, ocr, ocr_model) VALUES (?, 'p x harbour', 'WELCOME TO "
               "ZORVIK', 'o')", (a,))
    for table in ("keywords", "keywords_tri"):
        db.execute(f"INSERT INTO {table} (rowid, name, meta, ocr) VALUES (?, 'p x harbour', '', 'welcome to zorvik')",
                   (a,))
    db.commit()
    db.close()
    with Store(lib) as s:
        assert s.schema_version == SCHEMA_VERSION == 5
        total, matches, _ = s.keyword_matches(["zorvik", "harbour", "quimbly"])
        assert total == 1 and [set(m) for m in matches] == [{a}, {a}, set()]
        s.add_texts(["the quimbly fountain"], "c.csv", "m", image_ids=[a])
        assert set(s.keyword_matches(["quimbly"])[1][0]) == {a}
        assert s.image_words([a])[a]["captions"] == "the quimbly fountain"
        s.delete_images([a])  # the trigger of schema 5 unlinks the text
        assert s.get_texts(s.all_text_ids())[0].image_id is None


def test_the_cli_reports_links_and_shows_matched_captions_in_json(album, library, fake_encoder, tmp_path):
    runner = CliRunner()
    out = runner.invoke(cli, ["index", str(album), "--library", str(library), "--model", "fake-colour"])
    assert out.exit_code == 0, out.output
    path = corpus(tmp_path / "captions.csv", CAPTIONS)
    out = runner.invoke(cli, ["index-texts", str(path), "--library", str(library), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output[out.output.index("{"):])
    assert (report["linked"], report["unresolved"], report["ambiguous"]) == (2, 1, 1)
    out = runner.invoke(cli, ["search", "zorvik", "--library", str(library), "--no-rerank", "--json", "--mode",
                              "keyword"])
    assert out.exit_code == 0, out.output
    hits = json.loads(out.output)
    assert Path(hits[0]["path"]).name == "IMG_0001.jpg" and "Zorvik" in hits[0]["matched"]["captions"]
    out = runner.invoke(cli, ["search", "zorvik", "--library", str(library), "--no-rerank", "--mode", "keyword"])
    assert "matched captions: Boats moored at Zorvik" in out.output and "spans" not in out.output
    out = runner.invoke(cli, ["info", "--library", str(library)])
    assert "captions  2 photos" in out.output
    with Library(library) as lib:
        assert library_info(lib)["captions"]["photos"] == 2


# -- marking the matched words (the web page marks the spans the server gives)


@pytest.mark.parametrize("text, query, marked", [
    ("Tromsø aurora trip", "tromso", ["Tromsø"]),
    ("Tromso aurora trip", "tromsø", ["Tromso"]),
    ("Große Straße", "strasse", ["Straße"]),
    ("Łódź and Æro", "lodz aero", ["Łódź", "Æro"]),
    ("Đà Nẵng 北京站", "da 北京", ["Đà", "北京"]),
    ("a data dam", "da", ["da", "da"]),  # a short term only where a word starts
])
def test_spans_mark_letters_that_fold_to_ascii_without_a_combining_mark(text, query, marked):
    from xmodal.indexer.storage.words import query_terms

    terms = query_terms(query)
    assert [text[s:e] for s, e in word_spans(text, terms)] == marked
    spans = matched_fields({"name": text}, terms)["spans"]["name"]
    assert [text[s:e] for s, e in spans] == marked


def test_the_page_marks_the_spans_it_is_given_counting_code_points(tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the page's matchedLine is not run here")
    source = APP_JS.read_text(encoding="utf-8")
    start = source.index("  function matchedLine(")
    body = source[start:source.index("\n  }\n", start) + 4]
    shim = """
    class Node { constructor(tag) { this.tag = tag; this.children = []; this.textContent = ""; }
      append(...xs) { this.children.push(...xs); } }
    const document = { createElement: (tag) => new Node(tag) };
    """
    matched = {"name": "🌌 Tromsø aurora", "words": ["tromso"], "spans": {"name": [[2, 8]]},
               "captions": "Zorvik harbour", "ocr": "", "meta": ""}
    matched["spans"]["captions"] = [[0, 6]]
    script = (shim + body + f"const line = matchedLine({json.dumps(matched)});\n"
              "console.log(JSON.stringify(line.children.map((c) => typeof c === 'string' ? c : "
              "[c.tag, c.textContent])));")
    out = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    parts = json.loads(out.stdout)
    assert ["mark", "Tromsø"] in parts and ["mark", "Zorvik"] in parts
    assert ["span", "caption: "] in parts and "🌌 " in parts


def test_check_repair_embeds_a_caption_again_without_losing_its_photo(album, library, fake_encoder, tmp_path):
    from xmodal.indexer.storage.check import repair

    index_folders(library, [album], fake_encoder)
    index_text_corpus(library, corpus(tmp_path / "captions.csv", CAPTIONS[:1]), fake_encoder)
    db = sqlite3.connect(library / "library.db")
    db.execute("UPDATE texts SET vector = NULL")  # a row that lost its vector, and no index to take it from
    db.commit()
    db.close()
    for index_file in library.glob("texts.faiss*"):
        index_file.unlink()
    with Library(library) as lib:
        assert repair(lib, lambda: fake_encoder).reembedded == 1
        (text,) = lib.store.get_texts(lib.store.all_text_ids())
        assert text.image_id is not None
    assert keyword_names(library, "zorvik") == ["trips/IMG_0001.jpg"]
