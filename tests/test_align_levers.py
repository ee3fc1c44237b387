"""The pure parts of the alignment levers (engine/training/hard_negatives.py, distill.py): tiny tensors, no models."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from xmodal.engine.training.distill import fit_tau, kl_to_teacher, own_nll
from xmodal.engine.training.hard_negatives import (HardNegativeBatches, ImageGroupBatches, contrastive_loss,
                                                  hn_weighted_logits)


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 6, generator=g) * 3
    imgs = torch.tensor([0, 1, 1, 2, 3, 4])  # captions 1 and 2 share a photo: positives for each other
    return logits, (imgs[:, None] == imgs[None, :]).float()


def test_beta_zero_is_the_plain_multi_positive_infonce():
    logits, same = _batch()
    target = same / same.sum(1, keepdim=True)
    plain = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert torch.equal(contrastive_loss(logits, same, 0.0), plain)
    assert torch.equal(hn_weighted_logits(logits, same, 0.0), logits)


def test_hn_nce_weights_negatives_only_with_mean_one():
    logits, same = _batch()
    w = (hn_weighted_logits(logits, same, 0.5) - logits).exp()
    assert torch.allclose(w[same.bool()], torch.ones(int(same.sum())))  # positives untouched
    neg = ~same.bool()
    for row in range(6):
        assert torch.isclose(w[row][neg[row]].mean(), torch.tensor(1.0))
        hardest = logits[row].masked_fill(~neg[row], -1e9).argmax()
        assert w[row, hardest] == w[row][neg[row]].max()  # the hardest negative weighs most


def test_hn_nce_raises_the_loss_and_the_pull_on_the_hardest_negative():
    logits, same = _batch()
    assert contrastive_loss(logits, same, 0.5) > contrastive_loss(logits, same, 0.0)
    grads = []
    for beta in (0.0, 0.5):
        x = logits.clone().requires_grad_(True)
        contrastive_loss(x, same, beta).backward()
        grads.append(x.grad)
    row = 0
    order = logits[row].masked_fill(same[row].bool(), -1e9).argsort(descending=True)
    hardest, easiest = order[0], order[4]
    ratio = [g[row, hardest] / g[row, easiest] for g in grads]
    assert ratio[1] > ratio[0]  # the gradient leans toward the hard negative


def test_equal_logits_give_the_same_loss_whatever_beta():
    same = torch.eye(4)
    logits = torch.full((4, 4), 2.0)
    assert torch.allclose(contrastive_loss(logits, same, 0.5), contrastive_loss(logits, same, 0.0))


def test_hard_negative_batches_pair_each_seed_with_a_caption_of_a_mined_photo():
    caption_image = np.repeat(np.arange(10), 5)  # 10 photos x 5 captions
    neg_img = np.stack([(caption_image + 1) % 10, (caption_image + 2) % 10], 1)  # (50, 2)
    hn = HardNegativeBatches(neg_img, caption_image, share=0.5)
    batches = list(hn.epoch(8, np.random.default_rng(0)))
    assert len(batches) == 7  # as many as plain batching (ceil(50 / 8))
    for b in batches:
        assert len(b) == 8
        seeds, extra = b[:4], b[4:]
        for s, e in zip(seeds, extra):
            assert caption_image[e] in neg_img[s]
    again = list(hn.epoch(8, np.random.default_rng(0)))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))


def test_kl_is_zero_when_teacher_and_student_agree_and_positive_otherwise():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])
    assert kl_to_teacher(s, s + 7.0).abs() < 1e-6  # a shift changes no softmax
    assert kl_to_teacher(s, s.flip(1)) > 0.1
    x = s.clone().requires_grad_(True)
    kl_to_teacher(x, torch.tensor([[0.0, 0.0, 9.0], [0.0, 0.0, 9.0]])).backward()
    assert x.grad[0, 2] < 0  # pulled toward the teacher's favourite


def test_fit_tau_picks_the_temperature_that_fits_the_own_photo():
    rng = np.random.default_rng(0)
    images = np.tile(np.arange(4), (200, 1))
    truth = rng.integers(0, 4, 200)
    scores = rng.normal(0, 0.05, (200, 4))
    scores[np.arange(200), truth] += 0.1  # a confident-ish teacher on a 0.1 scale
    tau = fit_tau(scores, images, truth, taus=(0.001, 0.05, 10.0))
    assert tau == 0.05
    assert own_nll(scores, images, truth, 0.05) < own_nll(scores, images, truth, 10.0)


def test_image_group_batches_bring_every_caption_of_each_photo_once_an_epoch():
    caption_image = np.repeat(np.arange(7), 5)[np.random.default_rng(0).permutation(35)]  # 7 photos x 5 captions
    batches = list(ImageGroupBatches(caption_image, images=3).epoch(np.random.default_rng(1)))
    assert [len(np.unique(caption_image[b])) for b in batches] == [3, 3, 1]
    assert all(len(b) == 5 * len(np.unique(caption_image[b])) for b in batches)  # all five captions of each
    assert sorted(np.concatenate(batches).tolist()) == list(range(35))


def test_rectangular_loss_gives_each_photo_all_its_captions_as_positives():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=g)  # 6 captions x 3 photos, 2 captions each
    same = (torch.tensor([0, 0, 1, 1, 2, 2])[:, None] == torch.arange(3)[None, :]).float()
    t2i = F.cross_entropy(logits, same.argmax(1))
    i2t = F.cross_entropy(logits.T, same.T / 2)
    assert torch.allclose(contrastive_loss(logits, same), (t2i + i2t) / 2)


def test_max_pooled_takes_each_texts_maximum_over_its_own_tokens_only():
    from xmodal.engine.training.align import max_pooled

    states = np.array([[1, 5], [3, 2], [-1, -4], [0, 9], [2, 2]], np.float16)  # texts of 2, 1 and 2 tokens
    assert max_pooled(states, np.array([0, 2, 3, 5])).tolist() == [[3, 5], [-1, -4], [2, 9]]
