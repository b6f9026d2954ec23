"""Tests of prvos_core.pseudo.uncertainty: finite binary entropy, the seed's broken entropy, and why flip TTA needs
no uncertainty of its own."""

from __future__ import annotations

import math

import numpy as np
import torch

from prvos_core.config import RefineSection
from prvos_core.pseudo.refine import refine_expression
from prvos_core.pseudo.thresholds import Thresholds
from prvos_core.pseudo.uncertainty import binary_entropy, seed_entropy


def test_binary_entropy_is_zero_at_saturation_one_at_half_and_normalised_by_log2():
    p = np.array([0.0, 1.0, 0.5, 0.25], dtype=np.float32)
    h = binary_entropy(p)
    expected_quarter = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)  # 0.8113 bits
    np.testing.assert_allclose(h, [0.0, 0.0, 1.0, expected_quarter], rtol=1e-6, atol=0)
    assert h.dtype == np.float32


def test_binary_entropy_is_finite_symmetric_and_in_unit_range():
    p = np.linspace(0.0, 1.0, 1001)
    h = binary_entropy(p)
    assert np.isfinite(h).all()
    assert h.min() >= 0.0 and h.max() <= 1.0
    np.testing.assert_allclose(h, binary_entropy(1.0 - p), atol=1e-12)
    # Strictly increasing towards 0.5 from either side.
    assert (np.diff(h[:501]) > 0).all() and (np.diff(h[500:]) < 0).all()


def test_binary_entropy_torch_matches_numpy_and_keeps_type():
    p = np.array([[0.0, 0.1, 0.5], [0.9, 0.999, 1.0]], dtype=np.float32)
    h_torch = binary_entropy(torch.from_numpy(p))
    assert isinstance(h_torch, torch.Tensor) and h_torch.dtype == torch.float32
    assert torch.isfinite(h_torch).all()
    np.testing.assert_allclose(h_torch.numpy(), binary_entropy(p), rtol=1e-6, atol=1e-7)


def test_binary_entropy_clips_rounding_overshoot():
    h = binary_entropy(np.array([-1e-7, 1.0 + 1e-7]))
    np.testing.assert_array_equal(h, [0.0, 0.0])


def _saturation_video() -> np.ndarray:
    """(5, 8, 8) foreground probabilities: frames 0 and 4 saturated (exact 0 and 1, the most certain frames),
    frame 1 confident (0.02 / 0.98), frame 3 unsure (0.3 / 0.7), frame 2 a coin flip everywhere (0.5)."""
    left = np.zeros((8, 8), dtype=bool)
    left[:, :4] = True
    video = np.empty((5, 8, 8), dtype=np.float32)
    video[0] = np.where(left, 1.0, 0.0)
    video[1] = np.where(left, 0.98, 0.02)
    video[2] = 0.5
    video[3] = np.where(left, 0.7, 0.3)
    video[4] = np.where(~left, 1.0, 0.0)
    return video


def test_seed_entropy_is_nan_on_saturated_frames_and_picks_the_wrong_frames():
    video = _saturation_video()
    seed = seed_entropy(torch.from_numpy(video))
    assert torch.isnan(seed[0]) and torch.isnan(seed[4])
    assert torch.isfinite(seed[1:4]).all()
    # The seed kept torch.sort(entropy)[:3]: NaN sorts last, so the two most certain frames are never chosen and
    # the coin-flip frame is.
    seed_choice = sorted(torch.sort(seed).indices[:3].tolist())
    assert seed_choice == [1, 2, 3]
    assert np.isnan(seed_entropy(video)[[0, 4]]).all()

    # Ours: finite everywhere; the refinement keeps the truly certain frames 0, 4 (entropy 0) and 1.
    uncertainty = binary_entropy(video)
    assert np.isfinite(uncertainty).all()
    # The frames are unrelated on purpose (frame 4 is frame 0's complement): no temporal-consistency rule.
    cfg = RefineSection(frames_per_expression=3, min_temporal_iou=0)
    refined = refine_expression(video, uncertainty, Thresholds(0.5, 0.5), cfg)
    assert refined.pseudo_frames == (0, 1, 4)


def test_seed_entropy_gives_nan_for_every_frame_of_a_saturated_video():
    video = np.stack([_saturation_video()[0], _saturation_video()[4]])
    assert np.isnan(seed_entropy(video)).all()  # any ranking of these is arbitrary
    np.testing.assert_array_equal(binary_entropy(video).mean(axis=(1, 2)), [0.0, 0.0])


def test_seed_entropy_scores_equally_confident_classes_differently():
    background = np.full((1, 4, 4), 0.1)
    foreground = np.full((1, 4, 4), 0.9)
    # -p log p per pixel: 0.2303 for p = 0.1, 0.0948 for p = 0.9 (16 pixels each).
    np.testing.assert_allclose(seed_entropy(background), [16 * -0.1 * math.log(0.1)], rtol=1e-9)
    np.testing.assert_allclose(seed_entropy(foreground), [16 * -0.9 * math.log(0.9)], rtol=1e-9)
    np.testing.assert_allclose(binary_entropy(background), binary_entropy(foreground), atol=1e-12)


def test_the_entropy_of_a_mean_bounds_the_disagreement_of_its_two_parts():
    """Why flip TTA's uncertainty is H of the two predictions' mean (stages.infer): |p - q| <= H((p + q) / 2)
    for every p, q in [0, 1], so taking the max with the disagreement would change nothing."""
    p, q = np.meshgrid(np.linspace(0.0, 1.0, 201), np.linspace(0.0, 1.0, 201))
    assert (np.abs(p - q) <= binary_entropy((p + q) / 2) + 1e-12).all()
    # Where each pass is sure and they contradict, the mean is a coin flip: fully uncertain.
    assert binary_entropy(np.array([(1.0 + 0.0) / 2]))[0] == 1.0
