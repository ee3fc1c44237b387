"""xmodal.engine.eval.recall: Recall@K for image-caption retrieval."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from xmodal.engine.eval import recall
from xmodal.engine.eval.recall import i2t_ranks, recall_at_k, recall_report, t2i_ranks

# 3 images, 2 captions each: captions 0,1 -> image 0; 2,3 -> image 1; 4,5 -> image 2
CAPTION_IMAGE = np.array([0, 0, 1, 1, 2, 2])


def perfect_sim() -> np.ndarray:
    """(captions, images): every caption scores its own image 1 and the others 0."""
    sim = np.zeros((6, 3), np.float32)
    sim[np.arange(6), CAPTION_IMAGE] = 1.0
    return sim


def test_a_perfect_matrix_has_every_rank_zero_and_recall_100():
    sim = perfect_sim()
    assert t2i_ranks(sim, CAPTION_IMAGE).tolist() == [0] * 6
    assert i2t_ranks(sim.T, CAPTION_IMAGE).tolist() == [0] * 3
    report = recall_report(sim, CAPTION_IMAGE, ks=(1, 5))
    assert report == {"t2i": {"R@1": 100.0, "R@5": 100.0}, "i2t": {"R@1": 100.0, "R@5": 100.0},
                      "n_images": 3, "n_texts": 6}


def test_a_reversed_matrix_puts_every_answer_last():
    sim = 1.0 - perfect_sim()
    assert t2i_ranks(sim, CAPTION_IMAGE).tolist() == [2] * 6  # 2 other images above
    assert i2t_ranks(sim.T, CAPTION_IMAGE).tolist() == [4] * 3  # 4 other captions above
    assert recall_report(sim, CAPTION_IMAGE, ks=(1, 2))["t2i"] == {"R@1": 0.0, "R@2": 0.0}
    assert recall_report(sim, CAPTION_IMAGE, ks=(1,))["i2t"] == {"R@1": 0.0}


def test_one_of_two_captions_at_rank_two_halves_recall_at_one_and_two():
    # 2 images, 1 caption each. Caption 0 is right; caption 1 ranks its image behind image 0 (rank 1).
    sim = np.array([[0.9, 0.1],
                    [0.8, 0.3]], np.float32)
    ranks = t2i_ranks(sim, np.array([0, 1]))
    assert ranks.tolist() == [0, 1]
    assert recall_at_k(ranks, ks=(1, 2)) == {"R@1": 50.0, "R@2": 100.0}


def test_ties_count_against_the_ground_truth():
    constant = np.ones((6, 3), np.float32)
    assert t2i_ranks(constant, CAPTION_IMAGE).tolist() == [2] * 6
    assert i2t_ranks(constant.T, CAPTION_IMAGE).tolist() == [4] * 3  # own captions never count against
    sim = np.array([[0.5, 0.5, 0.1]], np.float32)  # tie with one other image
    assert t2i_ranks(sim, np.array([1])).tolist() == [1]


def test_i2t_counts_a_hit_if_any_of_the_images_captions_is_near_the_top():
    # image 0's captions (0 and 1): caption 1 is the best-scoring caption overall, caption 0 the worst.
    sim_it = np.array([[0.0, 0.9, 0.5, 0.4, 0.3, 0.2],
                       [0.1, 0.1, 0.8, 0.7, 0.0, 0.0],
                       [0.9, 0.9, 0.0, 0.0, 0.1, 0.2]], np.float32)
    ranks = i2t_ranks(sim_it, CAPTION_IMAGE)
    assert ranks.tolist() == [0, 0, 2]  # image 2: captions 0 and 1 of image 0 outscore both of its own
    assert recall_at_k(ranks, ks=(1, 3)) == {"R@1": pytest.approx(200 / 3), "R@3": 100.0}


def test_recall_is_a_percentage_per_k():
    assert recall_at_k(np.array([0, 1, 4, 9, 10]), ks=(1, 5, 10)) == {"R@1": 20.0, "R@5": 60.0, "R@10": 80.0}
    with pytest.raises(ValueError):
        recall_at_k(np.array([]))
    with pytest.raises(ValueError):
        recall_at_k(np.array([0]), ks=(0,))


def reference_ranks(sim: np.ndarray, truth_sets: list[set[int]]) -> np.ndarray:
    """Slow reference: sort each row best first, ground truth placed after any tied non-truth item."""
    out = []
    for row, truth in zip(sim, truth_sets):
        is_truth = np.array([j in truth for j in range(len(row))])
        order = np.lexsort((is_truth, -row))  # by score descending, then non-truth before truth
        out.append(int(np.flatnonzero(is_truth[order])[0]))
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunked_ranks_match_an_argsort_reference(seed, monkeypatch):
    monkeypatch.setattr(recall, "CHUNK_ELEMENTS", 64)  # force many chunks
    rng = np.random.default_rng(seed)
    n_images = 40
    caption_image = rng.permutation(np.concatenate([np.arange(n_images), rng.integers(0, n_images, 80)]))
    sim = rng.integers(0, 6, size=(len(caption_image), n_images)).astype(np.float32)  # many ties on purpose
    t2i = t2i_ranks(sim, caption_image)
    np.testing.assert_array_equal(t2i, reference_ranks(sim, [{int(i)} for i in caption_image]))
    i2t = i2t_ranks(sim.T, caption_image)
    own = [set(np.flatnonzero(caption_image == i).tolist()) for i in range(n_images)]
    np.testing.assert_array_equal(i2t, reference_ranks(sim.T, own))


def test_float_scores_without_ties_match_the_reference_too():
    rng = np.random.default_rng(7)
    caption_image = np.repeat(np.arange(30), 5)
    sim = rng.standard_normal((150, 30)).astype(np.float32)
    np.testing.assert_array_equal(t2i_ranks(sim, caption_image), reference_ranks(sim, [{i} for i in caption_image]))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="6 entries but the matrix has 5 captions"):
        t2i_ranks(np.zeros((5, 3)), CAPTION_IMAGE)
    with pytest.raises(ValueError, match="index the 2 images"):
        t2i_ranks(np.zeros((6, 2)), CAPTION_IMAGE)
    with pytest.raises(ValueError, match="image 3 has no caption"):
        i2t_ranks(np.zeros((4, 6)), CAPTION_IMAGE)
    sim = perfect_sim()
    sim[4, 1] = np.nan
    with pytest.raises(ValueError, match="row 4 contains NaN"):
        t2i_ranks(sim, CAPTION_IMAGE)


def test_a_large_matrix_is_ranked_in_chunks_without_full_size_temporaries():
    n_images, per_image = 1000, 5
    caption_image = np.repeat(np.arange(n_images), per_image)
    sim = np.random.default_rng(0).random((n_images * per_image, n_images), dtype=np.float32)  # 20 MB
    for ranks, matrix in ((t2i_ranks, sim), (i2t_ranks, sim.T)):
        tracemalloc.start()
        ranks(matrix, caption_image)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < sim.nbytes / 8, ranks.__name__  # a full-size boolean mask alone would be sim.nbytes / 4
