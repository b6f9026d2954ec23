"""The label conventions every step shares: what a training label value means and when a probability is "object".

A training label map holds 0 (background), 1 (object) or `IGNORE_LABEL` (pixels and frames the loss skips:
low-confidence pseudo-labelled pixels, rejected frames, frames with no label). A foreground probability p
becomes a hard prediction by `predicted_foreground` (p > 0.5, ties to background), with confidence
max(p, 1 - p): the teacher's index, refinement, its quality measures, the pictures, evaluation and `prvos
predict` all use these two, so a threshold change happens in one place.
"""

from __future__ import annotations

import numpy as np

IGNORE_LABEL = 255  # label value the loss ignores (also torch's `ignore_index` in prvos_core.model.loss)
FOREGROUND_THRESHOLD = 0.5  # p above it is the object


def predicted_foreground(prob: np.ndarray) -> np.ndarray:
    """The hard prediction of a probability map, bool of the same shape: p > 0.5 (ties go to background)."""
    return np.asarray(prob) > FOREGROUND_THRESHOLD


def confidence(prob: np.ndarray) -> np.ndarray:
    """Confidence in the predicted class, max(p, 1 - p), in [0.5, 1], same shape."""
    return np.maximum(prob, 1.0 - prob)


def binary_mask(prob: np.ndarray) -> np.ndarray:
    """The hard prediction as a uint8 {0, 1} mask (what is written as a PNG or scored)."""
    return predicted_foreground(prob).astype(np.uint8)
