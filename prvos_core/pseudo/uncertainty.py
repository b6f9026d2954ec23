"""Per-pixel uncertainty of the teacher's foreground probability, and its storage quantisation.

The teacher gives a foreground probability p per pixel. Its uncertainty is the binary entropy H(p), finite at
p = 0 and p = 1 (the PRVOS seed's formula was not: `seed_entropy` keeps it for the record). Two optional
estimates read the spread of several predictions instead: horizontal-flip test-time augmentation
(`flip_tta`) and MC-dropout variance (`mc_dropout_variance`); both are plain functions over a prediction
callable, so the model lives elsewhere. The hard prediction (p > 0.5) and its confidence are
`prvos_core.labels`'; the uint8 storage codec is `prvos_core.pseudo.store`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from prvos_core.errors import ConfigError

Array = TypeVar("Array", np.ndarray, torch.Tensor)

# Maps a batch of frames (N, 3, H, W) to foreground probabilities (N, H, W) in [0, 1].
PredictFn = Callable[[torch.Tensor], torch.Tensor]

_LOG2 = math.log(2.0)


def binary_entropy(prob: Array) -> Array:
    """Binary entropy of a foreground probability map, normalised to [0, 1].

    H(p) = -(p log p + (1 - p) log(1 - p)) in nats, divided by log 2 so that H(0.5) = 1 (the same value as
    the entropy in bits). 0 log 0 is taken as 0, so H(0) = H(1) = 0 exactly: saturated predictions are the
    most certain, never NaN. Values are clipped to [0, 1] first, because interpolation and dequantisation
    can overshoot by a rounding error.

    prob: numpy array or torch tensor of any shape; the result has the same type, shape and floating dtype
    (integer input gives float32).
    """
    if isinstance(prob, torch.Tensor):
        p = prob.clamp(0.0, 1.0)
        if not p.is_floating_point():
            p = p.float()
        q = 1.0 - p
        return -(torch.special.xlogy(p, p) + torch.special.xlogy(q, q)) / _LOG2
    p = np.clip(np.asarray(prob), 0.0, 1.0)
    if not np.issubdtype(p.dtype, np.floating):
        p = p.astype(np.float32)
    q = 1.0 - p
    return -(_xlogx(p) + _xlogx(q)) / p.dtype.type(_LOG2)


def _xlogx(x: np.ndarray) -> np.ndarray:
    """x log x with 0 log 0 = 0 (numpy has no xlogy)."""
    log = np.zeros_like(x)
    np.log(x, out=log, where=x > 0)
    return x * log


def seed_entropy(prob: Array) -> Array:
    """The PRVOS seed's frame entropy, reproduced only to document its failure.

    The seed computed `-sum_h sum_w p * log(p)` per frame of est_masks (B, T, H, W) and kept the 3 frames with
    the lowest value (`torch.sort(entropy)`). There is no (1 - p) term (a confident background pixel and a
    confident foreground pixel score differently) and no epsilon: 0 * log(0) = 0 * -inf = NaN, so any frame
    with one probability saturated at exactly 0 gets NaN, and sorting NaNs makes the frame choice arbitrary.
    Use `binary_entropy` instead.

    prob: (..., H, W) numpy array or torch tensor; returns (...), one value per frame, same type.
    """
    if isinstance(prob, torch.Tensor):
        return -torch.sum(torch.sum(prob * torch.log(prob), dim=-1), dim=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.sum(np.sum(prob * np.log(prob), axis=-1), axis=-1)


@dataclass(frozen=True)
class FlipPrediction:
    """Result of `flip_tta`.

    prob: (N, H, W) mean of the plain and the un-flipped flipped prediction.
    disagreement: (N, H, W) |plain - flipped| in [0, 1], a per-pixel uncertainty.
    """

    prob: torch.Tensor
    disagreement: torch.Tensor


@dataclass(frozen=True)
class DropoutPrediction:
    """Result of `mc_dropout_variance`.

    prob: (N, H, W) mean foreground probability over the samples.
    variance: (N, H, W) population variance over the samples, in [0, 0.25].
    """

    prob: torch.Tensor
    variance: torch.Tensor


@torch.no_grad()
def flip_tta(predict_fn: PredictFn, frames: torch.Tensor) -> FlipPrediction:
    """Horizontal-flip test-time augmentation.

    frames: (N, 3, H, W). predict_fn maps (N, 3, H, W) frames to (N, H, W) foreground probabilities. The
    flipped input's prediction is flipped back before it is compared with the plain one.
    """
    plain = _predict(predict_fn, frames)
    flipped = _predict(predict_fn, frames.flip(-1)).flip(-1)
    return FlipPrediction(prob=(plain + flipped) / 2, disagreement=(plain - flipped).abs())


@torch.no_grad()
def mc_dropout_variance(predict_fn_with_dropout: PredictFn, frames: torch.Tensor, samples: int) -> DropoutPrediction:
    """Mean and variance of `samples` stochastic predictions (MC dropout).

    predict_fn_with_dropout must keep its dropout layers active (train mode) so that calls differ.
    frames: (N, 3, H, W); returns (N, H, W) mean and variance, accumulated one sample at a time (Welford) so
    memory does not grow with `samples`.
    """
    if samples < 2:
        raise ConfigError(f"MC-dropout samples must be at least 2 to give a variance (got {samples}); raise it")
    mean = _predict(predict_fn_with_dropout, frames).double()
    m2 = torch.zeros_like(mean)
    for count in range(2, samples + 1):
        sample = _predict(predict_fn_with_dropout, frames).double()
        delta = sample - mean
        mean += delta / count
        m2 += delta * (sample - mean)
    return DropoutPrediction(prob=mean.float(), variance=(m2 / samples).float())


def _predict(predict_fn: PredictFn, frames: torch.Tensor) -> torch.Tensor:
    if frames.ndim != 4:
        raise ValueError(f"frames must be (N, 3, H, W), got shape {tuple(frames.shape)}")
    prob = predict_fn(frames)
    expected = (frames.shape[0], frames.shape[2], frames.shape[3])
    if tuple(prob.shape) != expected:
        raise ValueError(f"predict_fn must return (N, H, W) = {expected} probabilities, got {tuple(prob.shape)}")
    return prob
