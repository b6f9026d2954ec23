"""Per-pixel uncertainty of the teacher's foreground probability.

The teacher gives a foreground probability p per pixel. Its uncertainty is the binary entropy H(p), finite at
p = 0 and p = 1 (the PRVOS seed's formula was not: `seed_entropy` keeps it for the record). With flip
test-time augmentation (`infer.uncertainty: flip`) p is the mean of the video's and the mirrored video's
predictions (`prvos_core.inference.predict`), and H(p) then also counts their disagreement. The hard
prediction (p > 0.5) and its confidence are `prvos_core.labels`'; the uint8 storage codec is
`prvos_core.pseudo.store`'s.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)

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
