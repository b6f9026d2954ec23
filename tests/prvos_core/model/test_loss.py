"""Loss: weighted 2-class cross-entropy with ignore, normalised by the weights of labelled pixels, and
L = L_first + lambda * L_rest."""

from __future__ import annotations

import math

import pytest
import torch

from prvos_core.labels import IGNORE_LABEL
from prvos_core.model.loss import clip_loss, soft_dice_loss, weighted_cross_entropy


def _hand_cross_entropy(background: float, foreground: float, label: int) -> float:
    """-log softmax([background, foreground])[label], written out."""
    chosen = foreground if label == 1 else background
    return -(chosen - math.log(math.exp(background) + math.exp(foreground)))


def _hand_weighted_mean(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> float:
    """sum(w * CE) / sum(w) over pixels whose label is not IGNORE_LABEL, for logits (N,2,H,W)."""
    total, weight_sum = 0.0, 0.0
    n, _, h, w = logits.shape
    for i in range(n):
        for y in range(h):
            for x in range(w):
                label = int(labels[i, y, x])
                if label == IGNORE_LABEL:
                    continue
                ce = _hand_cross_entropy(float(logits[i, 0, y, x]), float(logits[i, 1, y, x]), label)
                total += float(weights[i, y, x]) * ce
                weight_sum += float(weights[i, y, x])
    return total / weight_sum


def test_weighted_cross_entropy_with_ignore_equals_hand_computation():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, 3.0]], [[-1.0, 1.0], [0.5, -2.0]]]])  # (1,2,2,2)
    labels = torch.tensor([[[0, 1], [IGNORE_LABEL, 1]]])
    weights = torch.tensor([[[1.0, 0.5], [7.0, 0.25]]])
    # By hand: pixel (0,0) label 0: -log(e^2/(e^2+e^-1)); (0,1) label 1: -log(e^1/(e^-1+e^1));
    # (1,0) ignored, its weight 7 must not count; (1,1) label 1: -log(e^-2/(e^3+e^-2)).
    expected = (
        1.0 * -math.log(math.exp(2) / (math.exp(2) + math.exp(-1)))
        + 0.5 * -math.log(math.exp(1) / (math.exp(-1) + math.exp(1)))
        + 0.25 * -math.log(math.exp(-2) / (math.exp(3) + math.exp(-2)))
    ) / (1.0 + 0.5 + 0.25)
    assert float(weighted_cross_entropy(logits, labels, weights)) == pytest.approx(expected, rel=1e-6)
    assert float(weighted_cross_entropy(logits, labels, weights)) == pytest.approx(
        _hand_weighted_mean(logits, labels, weights), rel=1e-6
    )


def test_no_weights_means_weight_one_for_every_labelled_pixel():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 4, 5)
    labels = torch.randint(0, 2, (2, 4, 5))
    labels[0, 0] = IGNORE_LABEL
    assert torch.allclose(
        weighted_cross_entropy(logits, labels), weighted_cross_entropy(logits, labels, torch.ones(2, 4, 5))
    )
    assert float(weighted_cross_entropy(logits, labels)) == pytest.approx(
        _hand_weighted_mean(logits, labels, torch.ones(2, 4, 5)), rel=1e-5
    )


@pytest.mark.parametrize("rest_weight", [10.0, 1.0, 0.0])
def test_clip_loss_is_first_plus_lambda_times_rest_pooled_over_frames(rest_weight):
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 2, 4, 4)
    labels = torch.randint(0, 2, (2, 3, 4, 4))
    labels[:, :, 0, :] = IGNORE_LABEL
    weights = torch.rand(2, 3, 4, 4)
    loss = clip_loss(logits, labels, weights, rest_weight=rest_weight)
    first = _hand_weighted_mean(logits[:, 0], labels[:, 0], weights[:, 0])
    # L_rest pools frames 1..T-1 of the whole batch into one weighted mean.
    rest = _hand_weighted_mean(logits[:, 1:].flatten(0, 1), labels[:, 1:].flatten(0, 1), weights[:, 1:].flatten(0, 1))
    assert float(loss.first) == pytest.approx(first, rel=1e-5)
    assert float(loss.rest) == pytest.approx(rest, rel=1e-5)
    assert float(loss.total) == pytest.approx(first + rest_weight * rest, rel=1e-5)


def test_all_ignored_frames_contribute_zero_without_nan():
    torch.manual_seed(2)
    logits = torch.randn(1, 3, 2, 4, 4, requires_grad=True)
    labels = torch.randint(0, 2, (1, 3, 4, 4))
    labels[:, 2] = IGNORE_LABEL
    with_ignored = clip_loss(logits, labels)
    without = clip_loss(logits[:, :2], labels[:, :2])
    assert float(with_ignored.total.detach()) == pytest.approx(float(without.total.detach()), rel=1e-6)

    labels[:] = IGNORE_LABEL
    nothing = clip_loss(logits, labels)
    assert float(nothing.total.detach()) == 0.0 and float(nothing.first) == 0.0 and float(nothing.rest) == 0.0
    nothing.total.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_zero_weights_count_like_ignored_pixels():
    torch.manual_seed(3)
    logits = torch.randn(1, 2, 3, 3)
    labels = torch.randint(0, 2, (1, 3, 3))
    weights = torch.ones(1, 3, 3)
    weights[0, 0] = 0.0
    ignored = labels.clone()
    ignored[0, 0] = IGNORE_LABEL
    assert torch.allclose(weighted_cross_entropy(logits, labels, weights), weighted_cross_entropy(logits, ignored))


def test_one_frame_clip_has_no_rest_term_and_shapes_are_checked():
    logits, labels = torch.randn(2, 1, 2, 4, 4), torch.randint(0, 2, (2, 1, 4, 4))
    loss = clip_loss(logits, labels)
    assert float(loss.rest) == 0.0 and float(loss.total) == pytest.approx(float(loss.first))
    with pytest.raises(ValueError, match="disagree"):
        clip_loss(logits, torch.zeros(2, 1, 4, 5, dtype=torch.long))


def test_soft_dice_equals_hand_computation_per_frame_and_skips_unlabelled_frames():
    # Frame 0: p = (0.9, 0.2 | 0.5, ignored), labels (1, 0 | 1, X), weights (1, 1 | 0.5, 1).
    logits = torch.zeros(3, 2, 2, 2)
    probs = torch.tensor([[0.9, 0.2], [0.5, 0.7]])
    logits[0, 1] = torch.log(probs / (1 - probs))  # softmax([0, l])[1] = sigmoid(l) = p
    labels = torch.tensor([[[1, 0], [1, IGNORE_LABEL]], [[0, 0], [0, 0]], [[IGNORE_LABEL] * 2] * 2])
    weights = torch.tensor([[[1.0, 1.0], [0.5, 1.0]], [[1.0] * 2] * 2, [[1.0] * 2] * 2])
    # Frame 0: 1 - (2 * (0.9 + 0.5 * 0.5) + 1) / ((0.9 + 1) + 0.2 + 0.5 * (0.5 + 1) + 1); frame 1 (no object,
    # p = 0.5 everywhere): 1 - 1 / (4 * 0.5 + 1); frame 2 is all ignored and left out of the mean.
    frame0 = 1 - (2 * (0.9 + 0.25) + 1) / (1.9 + 0.2 + 0.75 + 1)
    frame1 = 1 - 1 / (2.0 + 1)
    loss = soft_dice_loss(logits, labels, weights)
    assert loss.item() == pytest.approx((frame0 + frame1) / 2, abs=1e-5)


def test_soft_dice_is_small_for_a_good_mask_of_a_small_object_where_cross_entropy_is_not_enough():
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[0, :4, :4] = 1  # 1.6% of the pixels
    everything_background = torch.zeros(1, 2, 32, 32)
    everything_background[:, 0] = 4.0
    right = torch.zeros(1, 2, 32, 32)
    right[:, 0] = 8.0  # confident background: p = 3e-4 per pixel
    right[0, 1, :4, :4] = 16.0
    # Predicting background everywhere costs little cross-entropy but nearly the full Dice loss.
    assert weighted_cross_entropy(everything_background, labels).item() < 0.1
    assert soft_dice_loss(everything_background, labels).item() > 0.85
    assert soft_dice_loss(right, labels).item() < 0.05


def test_dice_term_is_added_with_its_weight_and_has_gradients():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 2, 8, 8, requires_grad=True)
    labels = torch.randint(0, 2, (2, 3, 8, 8))
    plain = clip_loss(logits, labels, rest_weight=10.0)
    with_dice = clip_loss(logits, labels, rest_weight=10.0, dice_weight=2.0)
    assert plain.dice.item() == 0.0
    expected_dice = soft_dice_loss(logits.flatten(0, 1), labels.flatten(0, 1))
    assert with_dice.dice.item() == pytest.approx(expected_dice.item(), rel=1e-6)
    assert with_dice.total.item() == pytest.approx(plain.total.item() + 2.0 * expected_dice.item(), rel=1e-6)
    with_dice.total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
