"""xmodal.indexer.ingest.texts: reading a corpus of texts from .txt, .csv and .jsonl files."""
from __future__ import annotations

import json
import logging
import types

import pytest

from xmodal.indexer.ingest.texts import TextCorpusError, read_corpus, read_texts
from xmodal.indexer.records import CorpusText


def write(path, content: str, encoding: str = "utf-8") -> str:
    path.write_bytes(content.encode(encoding))
    return str(path)


def test_txt_gives_one_stripped_text_per_line_skipping_blank_lines(tmp_path):
    path = write(tmp_path / "captions.txt", "a dog on a beach\n\n   \n  two cats  \r\nsunset over water")

    assert list(read_texts(path)) == ["a dog on a beach", "two cats", "sunset over water"]


def test_extension_is_matched_case_insensitively(tmp_path):
    path = write(tmp_path / "CAPTIONS.TXT", "hello\n")

    assert list(read_texts(path)) == ["hello"]


def test_csv_reads_the_caption_column(tmp_path):
    path = write(tmp_path / "c.csv", 'id,caption\n1,a red car\n2,"a quoted, comma caption"\n3,\n')

    assert list(read_texts(path)) == ["a red car", "a quoted, comma caption"]


def test_csv_falls_back_to_the_text_column(tmp_path):
    path = write(tmp_path / "t.csv", "text,lang\nbonjour,fr\nhello,en\n")

    assert list(read_texts(path)) == ["bonjour", "hello"]


def test_csv_prefers_caption_over_text(tmp_path):
    path = write(tmp_path / "both.csv", "text, Caption \nnot me,me\n")

    assert list(read_texts(path)) == ["me"]


def test_csv_without_a_usable_column_names_the_file_and_the_columns_found(tmp_path):
    path = write(tmp_path / "wrong.csv", "id,description\n1,a boat\n")

    with pytest.raises(TextCorpusError) as info:
        list(read_texts(path))

    message = str(info.value)
    assert "wrong.csv" in message and "'id'" in message and "'description'" in message
    assert "caption" in message


def test_empty_csv_is_an_error_asking_for_a_header(tmp_path):
    path = write(tmp_path / "empty.csv", "")

    with pytest.raises(TextCorpusError, match="header"):
        list(read_texts(path))


def test_jsonl_reads_the_text_field(tmp_path):
    lines = [json.dumps({"text": "first", "id": 1}), "", json.dumps({"text": "  second  "})]
    path = write(tmp_path / "t.jsonl", "\n".join(lines) + "\n")

    assert list(read_texts(path)) == ["first", "second"]


def test_jsonl_bad_lines_are_logged_with_their_line_number_and_skipped(tmp_path, caplog):
    lines = ['{"text": "ok 1"}', "{not json", '{"caption": "no text field"}', '["a list"]', '{"text": "ok 2"}']
    path = write(tmp_path / "scraped.jsonl", "\n".join(lines))

    with caplog.at_level(logging.WARNING, logger="xmodal.indexer.ingest.texts"):
        texts = list(read_texts(path))

    assert texts == ["ok 1", "ok 2"]
    warned = [r.getMessage() for r in caplog.records]
    assert any("scraped.jsonl:2" in w for w in warned)
    assert any("scraped.jsonl:3" in w and "text" in w for w in warned)
    assert any("scraped.jsonl:4" in w for w in warned)
    assert len(warned) == 3


@pytest.mark.parametrize("name, content", [
    ("bom.txt", "first\nsecond\n"),
    ("bom.csv", "caption\nfirst\nsecond\n"),
    ("bom.jsonl", '{"text": "first"}\n{"text": "second"}\n'),
])
def test_utf8_byte_order_mark_is_tolerated(tmp_path, name, content):
    path = write(tmp_path / name, content, encoding="utf-8-sig")

    assert list(read_texts(path)) == ["first", "second"]


def test_non_ascii_utf8_text_comes_through(tmp_path):
    path = write(tmp_path / "intl.txt", "café au lait\n東京の夜景\n")

    assert list(read_texts(path)) == ["café au lait", "東京の夜景"]


def test_file_that_is_not_utf8_asks_to_resave_as_utf8(tmp_path):
    path = write(tmp_path / "latin1.txt", "caf\u00e9 cr\u00e8me\n", encoding="latin-1")

    with pytest.raises(TextCorpusError) as info:
        list(read_texts(path))

    assert "latin1.txt" in str(info.value) and "UTF-8" in str(info.value)


def test_unsupported_extension_lists_the_supported_ones(tmp_path):
    path = write(tmp_path / "captions.xlsx", "")

    with pytest.raises(TextCorpusError) as info:
        read_texts(path)

    message = str(info.value)
    assert "captions.xlsx" in message and ".txt" in message and ".csv" in message and ".jsonl" in message


def test_missing_file_is_a_corpus_error_naming_it(tmp_path):
    with pytest.raises(TextCorpusError, match="missing.txt.*not found"):
        read_texts(str(tmp_path / "missing.txt"))


def test_reads_lazily_as_a_stream(tmp_path):
    path = write(tmp_path / "big.txt", "".join(f"line {i}\n" for i in range(1000)))

    stream = read_texts(path)

    assert isinstance(stream, types.GeneratorType)
    assert next(stream) == "line 0"
    stream.close()


# -- texts that name the photo they describe


def test_a_csv_image_column_names_the_photo_each_caption_describes_as_in_flickr8k(tmp_path):
    path = write(tmp_path / "captions.csv", "image,caption\n1000.jpg,A child in pink\n1001.jpg,\n,no photo here\n")

    assert list(read_corpus(path)) == [CorpusText("A child in pink", "1000.jpg"), CorpusText("no photo here", None)]
    assert list(read_texts(path)) == ["A child in pink", "no photo here"]  # callers wanting strings see strings


def test_a_csv_without_an_image_column_but_with_a_path_column_uses_it(tmp_path):
    path = write(tmp_path / "c.csv", "Path,Text\ntrips/a.jpg,harbour at dawn\n")

    assert list(read_corpus(path)) == [CorpusText("harbour at dawn", "trips/a.jpg")]


def test_jsonl_image_field_names_the_photo_and_a_non_string_one_skips_the_line(tmp_path, caplog):
    path = write(tmp_path / "c.jsonl", '{"text": "a", "image": "x/a.jpg"}\n{"text": "b"}\n{"text": "c", "image": 7}\n')

    with caplog.at_level(logging.WARNING):
        assert list(read_corpus(path)) == [CorpusText("a", "x/a.jpg"), CorpusText("b", None)]
    assert "c.jsonl:3" in caplog.text and "'image' field is not a string" in caplog.text


def test_plain_text_lines_name_no_photo(tmp_path):
    path = write(tmp_path / "t.txt", "image,caption\n")

    assert list(read_corpus(path)) == [CorpusText("image,caption", None)]
