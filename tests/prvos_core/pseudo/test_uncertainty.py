"""Tests of prvos_core.pseudo.uncertainty: finite binary entropy, the seed's broken entropy, TTA, MC dropout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prvos_core.config import RefineSection
from prvos_core.errors import ConfigError
from prvos_core.pseudo.refine import refine_expression
from prvos_core.pseudo.thresholds import Thresholds
from prvos_core.pseudo.uncertainty import binary_entropy, flip_tta, mc_dropout_variance, seed_entropy


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
    refined = refine_expression(video, uncertainty, Thresholds(0.5, 0.5), RefineSection(frames_per_expression=3))
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


def _ramp_predict(frames: torch.Tensor) -> torch.Tensor:
    """A toy model that is not flip-equivariant: p = channel 0 * column ramp 0..1."""
    ramp = torch.linspace(0.0, 1.0, frames.shape[-1])
    return frames[:, 0] * ramp


def test_flip_tta_averages_with_the_unflipped_prediction_of_the_flipped_input():
    torch.manual_seed(0)
    frames = torch.rand(2, 3, 5, 4)
    result = flip_tta(_ramp_predict, frames)
    ramp = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0])
    # Flipped input through the model, flipped back: channel0 * reversed ramp.
    flipped_back = frames[:, 0] * ramp.flip(0)
    torch.testing.assert_close(result.prob, (frames[:, 0] * ramp + flipped_back) / 2)
    torch.testing.assert_close(result.disagreement, frames[:, 0] * (ramp - ramp.flip(0)).abs())
    # Columns 0 and 3 disagree by the whole channel value, columns 1 and 2 by a third of it.
    torch.testing.assert_close(result.disagreement[:, :, 0], frames[:, 0, :, 0])
    torch.testing.assert_close(result.disagreement[:, :, 1], frames[:, 0, :, 1] / 3)


def test_flip_tta_of_an_equivariant_model_has_no_disagreement():
    frames = torch.rand(1, 3, 6, 6)
    result = flip_tta(lambda x: torch.sigmoid(x.mean(dim=1)), frames)
    torch.testing.assert_close(result.prob, torch.sigmoid(frames.mean(dim=1)))
    assert result.disagreement.abs().max() < 1e-6


def test_flip_tta_rejects_a_predict_fn_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        flip_tta(lambda x: x[:, :2], torch.rand(1, 3, 4, 4))


def test_mc_dropout_variance_of_known_samples():
    values = iter([0.2, 0.4, 0.9])
    frames = torch.zeros(2, 3, 3, 3)
    result = mc_dropout_variance(lambda x: torch.full((2, 3, 3), next(values)), frames, samples=3)
    torch.testing.assert_close(result.prob, torch.full((2, 3, 3), 0.5))
    expected_variance = ((0.2 - 0.5) ** 2 + (0.4 - 0.5) ** 2 + (0.9 - 0.5) ** 2) / 3  # 0.08667
    torch.testing.assert_close(result.variance, torch.full((2, 3, 3), expected_variance))


def test_mc_dropout_variance_matches_stacked_samples_of_a_real_dropout_layer():
    dropout = torch.nn.Dropout(p=0.5).train()

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(dropout(x).sum(dim=1))

    frames = torch.randn(2, 3, 4, 4)
    torch.manual_seed(7)
    result = mc_dropout_variance(predict, frames, samples=6)
    torch.manual_seed(7)
    stacked = torch.stack([predict(frames) for _ in range(6)])
    torch.testing.assert_close(result.prob, stacked.mean(dim=0))
    torch.testing.assert_close(result.variance, stacked.var(dim=0, unbiased=False))
    assert result.variance.max() > 0  # dropout made the samples differ


def test_mc_dropout_needs_two_samples():
    with pytest.raises(ConfigError, match="at least 2"):
        mc_dropout_variance(lambda x: x[:, 0], torch.zeros(1, 3, 2, 2), samples=1)
