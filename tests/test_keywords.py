"""The keyword index (schema 4): the words of names, embedded descriptions and OCR text in the store, their
folding (case, accents, CJK), the migration of older libraries, and the fusion with the semantic ranking."""
from __future__ import annotations

import sqlite3

import pytest
from PIL import Image

from conftest import older_schema

from xmodal.engine.search.hybrid import fuse, keyword_strength
from xmodal.engine.search.keyword_search import matched_fields, snippet
from xmodal.indexer.records import DecodedImage
from xmodal.indexer.storage.store import SCHEMA_VERSION, Store
from xmodal.indexer.storage.words import fold, name_words, query_terms


def decoded(path: str, description: str = "", size: int = 100) -> DecodedImage:
    return DecodedImage(path=path, size=size, mtime=1.0, sha256=f"sha-{path}", width=4, height=4, taken_at=None,
                        image=Image.new("RGB", (2, 2)), description=description)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "lib", create=True) as s:
        yield s


def ids_for(store: Store, query: str) -> set[int]:
    total, matches, counts = store.keyword_matches(query_terms(query))
    return set(keyword_strength(total, matches, counts))


# -- words


@pytest.mark.parametrize("path, words", [
    ("/p/photos/grandma_birthday_party.jpg", "p photos grandma birthday party"),
    ("/home/me/Trips/kilimanjaro-summit.2019.JPG", "me Trips kilimanjaro summit 2019"),
    ("/x/y/IMG_20190704_sunsetAtTheBeach.heic", "x y IMG 20190704 sunset At The Beach"),
    ("/a/b/HTMLParserNotes.png", "a b HTML Parser Notes"),
])
def test_names_split_on_separators_camel_case_and_digits_with_two_folders(path, words):
    assert name_words(path) == words


def test_folding_drops_case_and_accents_and_spaces_cjk_characters():
    assert fold("Tromsø Café ÆRØ Straße") == "tromso cafe aero strasse"
    assert fold("北京站").split() == ["北", "京", "站"]


def test_query_terms_drop_stopwords_unless_nothing_else_is_left():
    assert query_terms("a dog in the snow") == ["dog", "snow"]
    assert query_terms("The") == ["the"]
    assert query_terms("北京 station") == ["北京", "station"]


# -- the store


def test_a_new_photo_is_found_by_the_words_of_its_name_with_accents_and_case_folded(store):
    a, b = store.add_images([decoded("/p/x/grandma_birthday_party.jpg"), decoded("/p/x/Tromsø aurora trip.jpg")],
                            "m")
    assert ids_for(store, "birthday") == {a}
    assert ids_for(store, "TROMSO") == {b}
    assert ids_for(store, "tromsø") == {b}
    assert ids_for(store, "Aurora") == {b}


def test_parts_of_words_and_cjk_words_are_found(store):
    a, b = store.add_images([decoded("/p/x/kilimanjaro-summit.jpg"), decoded("/p/x/北京天安门.jpg")], "m")
    assert ids_for(store, "kilima") == {a}  # the start of a word
    assert ids_for(store, "manjaro") == {a}  # inside a word (trigrams)
    assert ids_for(store, "天安门") == {b}
    assert ids_for(store, "北京") == {b}
    assert ids_for(store, "zebra") == set()


def test_embedded_descriptions_and_ocr_text_are_searchable_and_kept_with_their_boxes(store):
    a, b = store.add_images([decoded("/p/1.jpg", "Sunset over Lake Malawi"), decoded("/p/2.jpg")], "m")
    assert ids_for(store, "malawi") == {a}
    store.set_ocr([(b, "ZORVIK bakery", [[1, 2, 30, 12, 0.98, "ZORVIK bakery"]], "ocr-x")])
    assert ids_for(store, "zorvik") == {b}
    assert store.ocr_boxes(b) == [[1, 2, 30, 12, 0.98, "ZORVIK bakery"]]
    assert store.image_words([b])[b]["ocr"] == "ZORVIK bakery"
    assert [i for i, _, _ in store.images_without_ocr("ocr-x")] == [a]
    assert [i for i, _, _ in store.images_without_ocr("ocr-y")] == [a, b]  # another model reads them again


def test_a_reader_of_the_same_family_reads_again_only_the_photos_the_other_found_no_text_in(store):
    a, b, c = store.add_images([decoded("/p/1.jpg"), decoded("/p/2.jpg"), decoded("/p/3.jpg")], "m")
    store.set_ocr([(a, "ZORVIK", [[1, 2, 30, 12, 0.98, "ZORVIK"]], "rapid-1"), (b, "", [], "rapid-1")])
    store.set_ocr([(c, "", [], "rapid-1/quick640")])
    # a new quick pass of the family: b (nothing found by the old one) again, a's text stands, c is its own
    assert [i for i, _, _ in store.images_without_ocr("rapid-1/quick640", "rapid-1")] == [b]
    assert [i for i, _, _ in store.images_without_ocr("rapid-1/quick640")] == [a, b]  # no family: all others
    assert [i for i, _, _ in store.images_without_ocr("other-2", "other")] == [a, b, c]  # another family
    assert [i for i, _, _ in store.images_without_ocr("rapid-10/x", "rapid-10")] == [a, b, c]  # not a prefix match


def test_deleting_or_replacing_a_photo_drops_its_words_and_a_move_renames_them(store):
    a, b = store.add_images([decoded("/p/x/pelican.jpg"), decoded("/p/x/walrus.jpg")], "m")
    store.set_ocr([(a, "HARBOUR", [], "o")])
    store.delete_images([a])
    assert ids_for(store, "pelican") == set() and ids_for(store, "harbour") == set()
    store.move_images([(b, decoded("/p/x/narwhal.jpg"))])
    assert ids_for(store, "walrus") == set() and ids_for(store, "narwhal") == {b}
    (c,), _ = store.replace_images([decoded("/p/x/narwhal.jpg", size=5)], "m")
    assert ids_for(store, "narwhal") == {c}
    db = sqlite3.connect(store.db_path)
    assert db.execute("SELECT count(*) FROM keywords").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM keywords_tri").fetchone()[0] == 1


def test_a_schema_3_library_gets_its_photos_names_indexed_on_opening(tmp_path):
    with older_schema(3), Store(tmp_path / "lib", create=True):  # the tables schema 3 made
        pass
    db = sqlite3.connect(tmp_path / "lib" / "library.db")  # and a photo as it wrote one
    a = db.execute("INSERT INTO images (raw_path, path, size, mtime, sha256, width, height, model, indexed_at) "
                   "VALUES (?, ?, 1, 1.0, 'h', 4, 4, 'm', '2024-01-01T00:00:00')",
                   (b"/p/x/snow_leopard.jpg", "/p/x/snow_leopard.jpg")).lastrowid
    db.commit()
    db.close()
    with Store(tmp_path / "lib") as s:
        assert s.schema_version == SCHEMA_VERSION
        assert ids_for(s, "leopard") == {a}
        assert [i for i, _, _ in s.images_without_ocr("o")] == [a]


# -- fusion


def test_a_photo_holding_every_query_word_comes_first_in_hybrid_and_keyword_modes():
    semantic = [(1, 0.40), (2, 0.35), (3, 0.20)]
    strength = {3: 1.0}
    assert [f.id for f in fuse(semantic, strength, "hybrid")][:1] == [3]
    assert [f.id for f in fuse(semantic, strength, "keyword")] == [3]
    assert [f.id for f in fuse(semantic, strength, "semantic")] == [1, 2, 3]
    assert [f.id for f in fuse(semantic, {9: 1.0}, "hybrid")][0] == 9  # found by its words alone


def test_a_weak_partial_match_does_not_overturn_a_clear_semantic_winner():
    semantic = [(1, 0.50), (2, 0.30), (3, 0.10)]
    assert [f.id for f in fuse(semantic, {2: 0.3}, "hybrid")] == [1, 2, 3]


def test_rare_terms_weigh_more_than_common_ones():
    strength = keyword_strength(100, [{1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}, {1: 1.0}])
    assert strength[1] == pytest.approx(1.0)
    assert strength[2] < 0.5 < strength[1]


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown mode 'fuzzy'"):
        fuse([], {}, "fuzzy")


def test_matched_fields_say_where_the_words_are():
    fields = {"name": "Trips kilimanjaro summit", "meta": "", "ocr": "WELCOME TO ZORVIK"}
    assert matched_fields(fields, ["zorvik"]) == {"ocr": "WELCOME TO ZORVIK", "words": ["zorvik"],
                                                  "spans": {"ocr": [[11, 17]]}}
    assert matched_fields(fields, ["nothing"]) is None
    long = "x " * 100 + "ZORVIK" + " y" * 100
    assert "ZORVIK" in snippet(long, "zorvik") and len(snippet(long, "zorvik")) < 90


def test_a_term_held_by_more_photos_than_are_fetched_is_counted_in_full(store):
    ids = store.add_images([decoded(f"/p/x/beach_{i}.jpg") for i in range(12)] + [decoded("/p/x/zebra.jpg")], "m")
    total, matches, counts = store.keyword_matches(["beach", "zebra"], limit=5)
    assert total == 13 and len(matches[0]) == 5 and counts == [12, 1]
    assert keyword_strength(total, matches, counts)[ids[-1]] > 0.7  # the rare word weighs most


def test_a_word_ocr_misread_by_a_letter_or_split_in_two_is_still_found(store):
    a, b, c = store.add_images([decoded("/p/1.jpg"), decoded("/p/2.jpg"), decoded("/p/3.jpg")], "m")
    store.set_ocr([(a, "Tipzan bakery", [], "o"), (b, "WOBBLE FOX", [], "o"), (c, "mip", [], "o")])
    assert ids_for(store, "mipzan") == {a}  # one letter wrong in a word of 6
    assert ids_for(store, "wobblefox") == {b}  # two neighbouring words run together
    assert ids_for(store, "mipzon") == set()  # exact words are never fuzzy-matched: "mip" is not near
    total, matches, _ = store.keyword_matches(["mipzan"])
    assert matches[0][a] < 1.0  # a near match weighs less than the word itself


def test_the_word_itself_outranks_a_longer_word_that_starts_with_it(store):
    a, b = store.add_images([decoded("/p/1.jpg"), decoded("/p/2.jpg")], "m")
    store.set_ocr([(a, "ZORDREVIK", [], "o"), (b, "ZORDRE", [], "o")])
    total, matches, counts = store.keyword_matches(["zordre"])
    strength = keyword_strength(total, matches, counts)
    assert strength[b] > strength[a] > 0
    semantic = [(100 + n, 0.5 - n / 100) for n in range(50)]
    semantic[2], semantic[9] = (a, semantic[2][1]), (b, semantic[9][1])  # the longer word ranks 7 places higher
    assert [f.id for f in fuse(semantic, strength, "hybrid")][0] == b
