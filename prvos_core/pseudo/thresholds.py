"""A round's confidence thresholds: the first of refinement's two passes.

Every refine task adds its expressions' foreground probabilities to a `ConfidenceHistogram`; the task
histograms are merged and `choose_thresholds` picks one confidence threshold per class (foreground,
background) from the whole round, without holding millions of frames in memory. `prvos_core.pseudo.refine`
then applies them expression by expression.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prvos_core.config import RefineSection
from prvos_core.labels import confidence, predicted_foreground


@dataclass(frozen=True)
class Thresholds:
    """Confidence thresholds of one round: a pixel predicted foreground (p > 0.5) is kept when p >= fg, one
    predicted background when 1 - p >= bg. Both lie in [0.5, 1); 0.5 keeps every pixel."""

    fg: float
    bg: float

    def __post_init__(self) -> None:
        if not (0.5 <= self.fg < 1.0 and 0.5 <= self.bg < 1.0):
            raise ValueError(f"thresholds must lie in [0.5, 1), got fg={self.fg}, bg={self.bg}")


class ConfidenceHistogram:
    """Streaming histogram of confidence max(p, 1 - p) over [0.5, 1] in `bins` equal bins, kept separately for
    pixels predicted foreground and background. Tasks each fill one and the round merges them, so thresholds
    come from every prediction of the round without holding them in memory.
    """

    def __init__(self, bins: int = 1000) -> None:
        if bins < 1:
            raise ValueError(f"a histogram needs at least 1 bin, got {bins}")
        self.bins = bins
        self.foreground = np.zeros(bins, dtype=np.int64)
        self.background = np.zeros(bins, dtype=np.int64)

    @property
    def bin_width(self) -> float:
        return 0.5 / self.bins

    def add(self, prob: np.ndarray) -> None:
        """Count every pixel of a probability map of any shape (e.g. (T, H, W)) with values in [0, 1]."""
        prob = np.clip(np.asarray(prob, dtype=np.float32), 0.0, 1.0)
        fg = predicted_foreground(prob)
        # conf = 1 lands in the last bin instead of one past it.
        index = np.minimum(((confidence(prob) - 0.5) * (2 * self.bins)).astype(np.int64), self.bins - 1)
        self.foreground += np.bincount(index[fg], minlength=self.bins)
        self.background += np.bincount(index[~fg], minlength=self.bins)

    def merge(self, other: ConfidenceHistogram) -> None:
        """Add another histogram's counts to this one (same number of bins)."""
        if other.bins != self.bins:
            raise ValueError(f"cannot merge histograms with {self.bins} and {other.bins} bins")
        self.foreground += other.foreground
        self.background += other.background

    def percentile(self, foreground: bool, q: float) -> float | None:
        """The q-th percentile (0..100) of one class's confidences, interpolated linearly inside its bin
        (exact to within one bin width); None when the class has no pixels."""
        counts = self.foreground if foreground else self.background
        total = int(counts.sum())
        if total == 0:
            return None
        target = q / 100.0 * total
        cumulative = np.cumsum(counts)
        if target <= 0:
            # The 0th percentile is the lower edge of the first occupied bin.
            return 0.5 + int(np.flatnonzero(counts)[0]) * self.bin_width
        index = int(np.argmax(cumulative >= target))
        before = int(cumulative[index] - counts[index])
        return 0.5 + (index + (target - before) / int(counts[index])) * self.bin_width


def choose_thresholds(histogram: ConfidenceHistogram, cfg: RefineSection) -> Thresholds:
    """Class-balanced percentile thresholds of a round (see `RefineSection`), clamped to
    [cfg.min_confidence, cfg.max_confidence]. A class with no pixels in the round gets cfg.min_confidence
    (there is nothing of it to keep). With refinement disabled the thresholds are 0.5: every pixel is kept."""
    if not cfg.enabled:
        return Thresholds(fg=0.5, bg=0.5)

    def clamped(value: float | None) -> float:
        if value is None:
            return cfg.min_confidence
        return float(min(max(value, cfg.min_confidence), cfg.max_confidence))

    return Thresholds(
        fg=clamped(histogram.percentile(True, cfg.percentile)),
        bg=clamped(histogram.percentile(False, cfg.percentile)),
    )
