"""The calibrated match probability (engine/search/calibration.py): fitting, its error measures, which model a
hit gets, and the shipped coefficients' key to the checkpoints. Pure: no model is loaded."""
from __future__ import annotations

import json

import numpy as np
import pytest

from xmodal.engine.search.calibration import (FEATURES, Calibration, Logistic, expected_calibration_error,
                                              feature_matrix, fit_logistic, hit_features, load_calibration, reliability_bins,
                                              with_probs)
from xmodal.indexer.records import SearchHit


def test_a_fitted_logistic_model_is_calibrated_on_data_drawn_from_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 2))
    true_p = 1 / (1 + np.exp(-(3 * x[:, 0] - 2 * x[:, 1] - 1)))
    y = (rng.random(len(x)) < true_p).astype(float)

    model = fit_logistic(x, y, ("a", "b"))

    assert expected_calibration_error(model.prob(x), y) < 0.02
    assert np.abs(model.prob(x) - true_p).max() < 0.05
    # an overconfident model on the same data is measured as such
    assert expected_calibration_error(np.clip(true_p * 1.6, 0, 1), y) > 0.1


def test_ece_is_the_count_weighted_gap_between_predicted_and_observed():
    prob = np.array([0.9] * 10 + [0.1] * 10)
    label = np.array([1] * 5 + [0] * 5 + [0] * 10)  # 0.9 predicted, half match; 0.1 predicted, none does

    assert expected_calibration_error(prob, label) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    bins = reliability_bins(prob, label)
    assert sum(b["count"] for b in bins) == 20 and bins[9]["frequency"] == 0.5 and bins[5]["mean_prob"] is None


def test_fitting_needs_both_kinds_of_example():
    with pytest.raises(ValueError, match="both matching and non-matching"):
        fit_logistic(np.ones((5, 1)), np.ones(5), ("a",))


def _model(features, coef, intercept) -> Logistic:
    return Logistic(tuple(features), tuple(coef), intercept, (0.0,) * len(coef), (1.0,) * len(coef))


CAL = Calibration(reranked=_model(FEATURES["reranked"], (0, 0, 10, 0, -10), -5),
                  dual=_model(FEATURES["dual"], (10, -10), -5), default_cutoff=0.5)


def test_reranked_hits_get_the_reranked_model_and_the_tail_the_cosine_model_with_gaps_to_the_best():
    hits = [SearchHit(1, 2.0, 1, "a", similarity=0.6, match=1.0, hubness=0.1),
            SearchHit(2, 1.0, 2, "b", similarity=0.5, match=0.2, hubness=0.0),
            SearchHit(3, 0.4, 3, "c")]  # beyond the reranked head: cosine only

    table, reranked = hit_features(hits)
    assert reranked.tolist() == [True, True, False]
    assert feature_matrix(table, FEATURES["reranked"])[1].tolist() == pytest.approx([0.5, 0.0, 0.2, 0.1, 0.8])
    assert feature_matrix(table, FEATURES["dual"])[2].tolist() == pytest.approx([0.4, 0.2])

    probs = [h.prob for h in with_probs(hits, CAL)]
    assert probs[0] == pytest.approx(1 / (1 + np.exp(-5)))  # match 1, gap 0
    assert probs[1] == pytest.approx(1 / (1 + np.exp(-(2 - 8 - 5))))
    assert probs[2] == pytest.approx(1 / (1 + np.exp(-(4 - 2 - 5))))


def test_a_model_reads_only_the_features_it_names():
    hits = [SearchHit(1, 2.0, 1, "a", similarity=0.6, match=1.0, hubness=0.1), SearchHit(2, 0.5, 2, "b")]
    absolute = Calibration(_model(("match",), (10,), -5), _model(("similarity",), (10,), -5), 0.5)

    probs = [h.prob for h in with_probs(hits, absolute)]

    assert probs == pytest.approx([1 / (1 + np.exp(-5)), 0.5])


def test_hits_reranked_by_another_reranker_get_the_cosine_model():
    hits = [SearchHit(1, 0.9, 1, "a", similarity=0.6, match=0.99, hubness=0.0)]

    (hit,) = with_probs(hits, CAL, reranked_ok=False)

    assert hit.prob == pytest.approx(1 / (1 + np.exp(-(6 - 5))))


def _write(tmp_path, model="lite", sha=None):
    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes(b"the weights")
    from xmodal.engine.search.calibration import file_sha256

    doc = {"model": model, "checkpoints": {"weights.pt": sha or file_sha256(ckpt)},
           "reranked": CAL.reranked.to_json(), "dual": CAL.dual.to_json(), "default_cutoff": 0.4}
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(doc))
    return path, ckpt


def test_the_calibration_loads_only_for_its_model_and_the_very_checkpoints_it_was_fitted_with(tmp_path):
    path, ckpt = _write(tmp_path)

    loaded = load_calibration("lite", {"weights.pt": ckpt}, path)
    assert loaded is not None and loaded.default_cutoff == 0.4 and loaded.dual == CAL.dual
    assert load_calibration("ViT-B-32", {"weights.pt": ckpt}, path) is None
    (tmp_path / "other").mkdir()
    other, _ = _write(tmp_path / "other", sha="0" * 64)  # fitted with other weights
    assert load_calibration("lite", {"weights.pt": ckpt}, other) is None
    assert load_calibration("lite", {}, path) is None  # the checkpoint is not there at all


def test_a_damaged_calibration_file_gives_no_probability_and_no_traceback(tmp_path):
    path = tmp_path / "cal.json"
    path.write_text("{not json")

    assert load_calibration("lite", {}, path) is None
    assert load_calibration("lite", {}, tmp_path / "missing.json") is None


def test_a_hits_lead_is_its_margin_over_the_best_other_candidate():
    from xmodal.engine.search.calibration import hit_features, lead_over_others

    np.testing.assert_allclose(lead_over_others(np.array([0.5, 0.3, 0.45])), [0.05, -0.2, -0.05])
    np.testing.assert_allclose(lead_over_others(np.array([0.5])), [0.0])  # no other candidate: no lead
    hits = [SearchHit(rank=i + 1, score=s, id=i, path=f"/p/{i}.jpg", similarity=s, match=m)
            for i, (s, m) in enumerate([(0.6, 0.9), (0.5, None), (0.4, 0.2)])]
    table, _ = hit_features(hits)
    np.testing.assert_allclose(table["lead"], [0.1, -0.1, -0.2])
    np.testing.assert_allclose(table["match_lead"], [0.7, 0.0, -0.7])  # only reranked hits have a match to lead
