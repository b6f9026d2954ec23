"""Label propagation by feature matching: it reads the memory's masks where the features match, carries a ground-truth
anchor's mask along a moving object with an untrained decoder, and changes nothing at weight 0."""

from __future__ import annotations

import pytest
import torch

from prvos_core.inference.matching import MATCH_LEVEL, LabelBank, Matching, match_key
from prvos_core.inference.propagation import AnchoredPropagation, iter_propagate, propagate
from tests.prvos_core.inference.conftest import TEXT_DIM, tiny_eval_model
from tests.prvos_core.model.test_model import synthetic_clip


@pytest.fixture(scope="module")
def model():
    """Pretrained backbone (the packaged ImageNet weights), random decoder: a student that learned nothing."""
    with tiny_eval_model(pretrained=True) as built:
        yield built


@pytest.fixture(scope="module")
def moving_square():
    frames, masks = synthetic_clip(frames=5)
    words, word_mask = torch.randn(4, TEXT_DIM), torch.ones(4, dtype=torch.bool)
    return frames[0], masks[0].float(), words, word_mask


def _iou(prob: torch.Tensor, truth: torch.Tensor) -> float:
    predicted, truth = prob > 0.5, truth > 0.5
    return float((predicted & truth).sum() / (predicted | truth).sum())


def test_a_bank_reads_the_mask_of_the_best_matching_positions():
    features = {MATCH_LEVEL: torch.zeros(1, 2, 2, 2)}
    features[MATCH_LEVEL][0, 0] = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # top row points one way
    features[MATCH_LEVEL][0, 1] = torch.tensor([[0.0, 0.0], [1.0, 1.0]])  # bottom row the other
    bank = LabelBank(recent=2, matching=Matching(weight=1.0, temperature=0.01, top_k=2))
    mask = torch.zeros(1, 2, 2)
    mask[0, 0] = 1.0  # the object fills the top row
    bank.anchor(features, mask)
    assert match_key(features).shape == (2, 4)
    flipped = {MATCH_LEVEL: features[MATCH_LEVEL].flip(-2)}  # the rows swapped: the object moved down
    read = bank.read(flipped, (2, 2))
    assert torch.allclose(read, mask.flip(-2), atol=1e-4)
    half = LabelBank(recent=2, matching=Matching(weight=0.25))
    assert torch.equal(half.blend(torch.full((1, 2, 2), 0.2), features), torch.full((1, 2, 2), 0.2)), "empty bank"
    half.anchor(features, mask)
    blended = half.blend(torch.full((1, 2, 2), 0.2), features)
    assert torch.allclose(blended, 0.75 * 0.2 + 0.25 * half.read(features, (2, 2)))


def test_matching_carries_the_anchor_along_a_moving_object_where_the_untrained_model_cannot(model, moving_square):
    frames, masks, words, word_mask = moving_square
    alone = propagate(model, frames, words, word_mask, masks[0])
    matched = propagate(model, frames, words, word_mask, masks[0], matching=Matching(weight=1.0))
    assert torch.equal(matched[0], masks[0])
    for t in range(1, 5):
        assert _iou(matched[t], masks[t]) > 0.5, (t, _iou(matched[t], masks[t]))  # measured 0.56-0.87
        assert _iou(alone[t], masks[t]) < 0.2  # measured 0.08-0.09
    # From the last frame backward, through the anchored propagation, as the teacher runs it.
    backward = list(AnchoredPropagation(model, frames, words, word_mask, {4: masks[4]}, matching=Matching(1.0)))
    assert all(_iou(backward[t], masks[t]) > 0.5 for t in range(4))  # measured 0.59-0.86


def test_weight_0_is_the_model_alone_bit_for_bit_and_one_anchor_at_0_is_the_forward_pass(model, moving_square):
    frames, masks, words, word_mask = moving_square
    plain = propagate(model, frames, words, word_mask, masks[0])
    assert torch.equal(propagate(model, frames, words, word_mask, masks[0], matching=Matching(weight=0.0)), plain)
    half = Matching(weight=0.5)
    forward = torch.stack(list(iter_propagate(model, frames, words, word_mask, masks[0], matching=half)))
    anchored = torch.stack(list(AnchoredPropagation(model, frames, words, word_mask, {0: masks[0]}, matching=half)))
    assert torch.equal(forward, anchored)
    assert not torch.equal(forward, plain)
    # Without a known first mask there is nothing to carry: the model alone (evaluation, unlabelled videos).
    assert torch.equal(
        propagate(model, frames, words, word_mask, None, matching=half), propagate(model, frames, words, word_mask)
    )


@pytest.mark.parametrize("bad", [dict(weight=1.5), dict(temperature=0.0), dict(top_k=0)])
def test_matching_settings_are_checked(bad):
    with pytest.raises(ValueError, match="matching needs"):
        Matching(**bad)
