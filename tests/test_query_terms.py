"""The query algebra's parser and combination (engine/search/query_terms.py), pure: no model, no library."""
from __future__ import annotations

import numpy as np
import pytest

from xmodal.engine.search.query_terms import QueryParseError, combine, parse_query


def terms(query: str) -> list[tuple[str, float]]:
    return [(t.text, t.weight) for t in parse_query(query).terms]


def test_a_minus_before_a_word_excludes_it():
    assert terms("a dog -grass") == [("a dog", 1.0), ("grass", -1.0)]
    assert parse_query("a dog -grass").describe() == "a dog, without grass"


def test_spaced_operators_and_weights_make_weighted_terms():
    assert terms("beach + 2:sunset - people") == [("beach", 1.0), ("sunset", 2.0), ("people", -1.0)]
    assert parse_query("beach + 2:sunset - people").describe() == "beach, sunset (x2), without people"


def test_a_quoted_phrase_is_one_term_and_closes_it():
    assert terms('"red car" -night') == [("red car", 1.0), ("night", -1.0)]
    assert terms('a dog -"green grass" running') == [("a dog", 1.0), ("green grass", -1.0), ("running", 1.0)]
    assert terms('-2:"red car" bike') == [("red car", -2.0), ("bike", 1.0)]


def test_an_operator_takes_the_words_up_to_the_next_operator():
    assert terms("a dog - a cat") == [("a dog", 1.0), ("a cat", -1.0)]
    assert terms("dog -grass -sand") == [("dog", 1.0), ("grass", -1.0), ("sand", -1.0)]


def test_hyphens_and_colons_inside_words_are_not_operators():
    assert terms("a man in a t-shirt") == [("a man in a t-shirt", 1.0)]
    assert terms("x-ray at 10:30") == [("x-ray at 10:30", 1.0)]
    assert parse_query("a man in a t-shirt").simple


def test_a_query_without_operators_is_simple():
    parsed = parse_query("  a dog   jumping into a lake ")
    assert parsed.simple and parsed.terms[0].text == "a dog jumping into a lake"
    assert not parse_query("2:dog").simple


def test_only_exclusions_is_an_error_that_says_what_to_add():
    with pytest.raises(QueryParseError, match="only excludes.*grass"):
        parse_query("-grass")
    with pytest.raises(QueryParseError, match="empty query"):
        parse_query(" - ")


def test_a_weight_out_of_range_is_an_error_naming_it():
    with pytest.raises(QueryParseError, match="'0:dog'"):
        parse_query("0:dog cat")
    with pytest.raises(QueryParseError, match="at most 100"):
        parse_query("cat 500:dog")


def test_the_reranker_text_is_the_positive_terms():
    assert parse_query("beach + 2:sunset - people").positive_text == "beach sunset"


def test_combine_is_the_renormalised_weighted_sum_of_unit_vectors():
    v = np.array([[2.0, 0, 0], [0, 3.0, 0]])  # lengths do not matter: each is made unit first
    out = combine(v, [1.0, -1.0])
    np.testing.assert_allclose(out, np.array([1, -1, 0]) / np.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(combine(v, [1.0, 3.0]), np.array([1, 3, 0]) / np.sqrt(10), rtol=1e-6)
    assert out.dtype == np.float32


def test_combine_refuses_terms_that_cancel():
    with pytest.raises(ValueError, match="cancel"):
        combine(np.array([[1.0, 0], [1.0, 0]]), [1.0, -1.0])
