"""Uncertainty-aware refinement of the teacher's pseudo-labels, applied once per round.

A round refines in two passes, because its thresholds depend on all of its predictions (millions of frames):

1. every task adds its expressions' foreground probabilities to a `ConfidenceHistogram`; the task histograms
   are merged and `choose_thresholds` picks one confidence threshold per class (foreground, background);
2. `refine_expression` turns each expression's probability and uncertainty maps into per-pixel labels
   (0 background, 1 object, 255 ignore), per-pixel loss weights and a frame choice with reasons, and measures
   on its ground-truth frames how good the pseudo-labels would have been (`prvos_core.pseudo_quality`).

`RefineConfig(enabled=False)` is the "no refinement" ablation: every pixel kept with weight 1, every frame kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from prvos_core.errors import ConfigError
from prvos_core.pseudo_quality import IGNORE_LABEL, QualityCounts, pseudo_label_quality, teacher_quality
from prvos_core.uncertainty import confidence, predicted_foreground

Weighting = Literal["confidence", "uniform"]
WEIGHTINGS: tuple[Weighting, ...] = ("confidence", "uniform")


@dataclass(frozen=True)
class RefineConfig:
    """How a round's teacher predictions become training labels.

    Thresholds are class-balanced percentiles: per class (pixels predicted foreground, pixels predicted
    background) the threshold is the `percentile`-th percentile of that class's confidence max(p, 1 - p) over
    the round, so each class keeps its most confident (100 - percentile)%. One shared threshold would not do:
    foreground is a small share of the pixels and the teacher is surer of background, so a shared cut keeps
    nearly all background and drops much of the foreground, feeding the next student a bias toward background.
    The clamp to [min_confidence, max_confidence] stops an early, weak teacher from keeping near-coin-flip
    pixels, and a saturated teacher from ignoring pixels it is 97% sure of only because the percentile says so.
    """

    enabled: bool = True  # False: the 'no refinement' ablation (every pixel kept, weight 1, every frame kept)
    percentile: float = 20.0  # per-class threshold = this percentile of the class's confidences (keeps the top 80%)
    min_confidence: float = 0.7  # thresholds never fall below this
    max_confidence: float = 0.95  # thresholds never rise above this (must be < 1)
    weighting: Weighting = "confidence"  # 'confidence': weight rises with confidence above the threshold; 'uniform': 1
    min_weight: float = 0.25  # 'confidence' weighting: weight of a kept pixel exactly at its class threshold
    frames_per_expression: int | None = 3  # K most certain frames kept per expression, as in the seed; None/<=0: all
    min_kept_ratio: float = 0.0  # a frame keeping fewer of its pixels than this is rejected (0: no minimum)
    # A frame whose predicted object area is outside [min, max] x the mean area on the expression's annotated
    # frames is rejected: the teacher lost the object (or took in a neighbour). 0 / null disable a bound.
    min_area_ratio: float = 0.5
    max_area_ratio: float | None = 2.0

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.percentile < 100.0:
            problems.append(f"refine.percentile must be in [0, 100) (got {self.percentile}); 20 keeps the top 80%")
        if not 0.5 <= self.min_confidence <= self.max_confidence < 1.0:
            problems.append(
                f"refine.min_confidence and refine.max_confidence must satisfy 0.5 <= min <= max < 1 "
                f"(got {self.min_confidence}, {self.max_confidence}); e.g. 0.7 and 0.95"
            )
        if self.weighting not in WEIGHTINGS:
            problems.append(f"refine.weighting must be one of {', '.join(WEIGHTINGS)} (got {self.weighting!r})")
        if not 0.0 <= self.min_weight <= 1.0:
            problems.append(f"refine.min_weight must be in [0, 1] (got {self.min_weight}); e.g. 0.25")
        if self.frames_per_expression is not None and not isinstance(self.frames_per_expression, int):
            problems.append(
                f"refine.frames_per_expression must be an integer or null (got {self.frames_per_expression!r}); "
                "use 3 as in the seed, or 0 to keep all frames"
            )
        if not 0.0 <= self.min_kept_ratio <= 1.0:
            problems.append(f"refine.min_kept_ratio must be in [0, 1] (got {self.min_kept_ratio}); 0 disables it")
        if self.min_area_ratio < 0 or (self.max_area_ratio is not None and self.max_area_ratio < self.min_area_ratio):
            problems.append(
                f"refine.min_area_ratio and refine.max_area_ratio must satisfy 0 <= min <= max "
                f"(got {self.min_area_ratio}, {self.max_area_ratio}); e.g. 0.5 and 2, or 0 and null to disable"
            )
        if problems:
            raise ConfigError("; ".join(problems))


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


def choose_thresholds(histogram: ConfidenceHistogram, cfg: RefineConfig) -> Thresholds:
    """Class-balanced percentile thresholds of a round (see `RefineConfig`), clamped to
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


@dataclass(frozen=True)
class FrameDecision:
    """Why one frame of an expression is or is not trained on.

    source: 'ground_truth' (label = the annotation) or 'pseudo_label'.
    reason: 'ground_truth', or e.g. 'rank 1 of 12 by mean entropy 0.031' for a kept pseudo-labelled frame and
    'rank 5 of 12 by mean entropy 0.210; top 3 already kept' for a rejected one.
    mean_entropy: mean per-pixel uncertainty of the teacher on the frame (lower = more certain).
    kept_ratio: share of the frame's pixels whose confidence reaches their class threshold (1 for GT frames).
    """

    frame_index: int
    source: Literal["ground_truth", "pseudo_label"]
    kept: bool
    reason: str
    mean_entropy: float
    kept_ratio: float


@dataclass(frozen=True)
class RefinedExpression:
    """The refined pseudo-labels of one expression.

    label: (T, H, W) uint8: 0 background, 1 object, 255 ignore (low-confidence pixels and rejected frames).
    weight: (T, H, W) float32 loss weight: in [cfg.min_weight, 1] on kept pseudo-labelled pixels, 1 on
    ground-truth frames, 0 where the label is ignore.
    frames: one decision per frame, in frame order.
    pseudo_quality: the refined labels the GT frames would have had, against their GT.
    teacher_quality: the raw teacher (p > 0.5, every pixel) on the GT frames, against their GT.
    """

    label: np.ndarray
    weight: np.ndarray
    frames: tuple[FrameDecision, ...]
    thresholds: Thresholds
    pseudo_quality: QualityCounts
    teacher_quality: QualityCounts

    @property
    def pseudo_frames(self) -> tuple[int, ...]:
        """Indices of the kept pseudo-labelled frames (the expression's chosen frames)."""
        return tuple(d.frame_index for d in self.frames if d.kept and d.source == "pseudo_label")


def refine_expression(
    prob: np.ndarray,
    uncertainty: np.ndarray,
    thresholds: Thresholds,
    cfg: RefineConfig,
    gt: Mapping[int, np.ndarray] | None = None,
) -> RefinedExpression:
    """Refine one expression's teacher predictions into labels, weights and a frame choice.

    prob: (T, H, W) float foreground probability of the teacher on every frame.
    uncertainty: (T, H, W) float per-pixel uncertainty (binary entropy, or a TTA / MC-dropout estimate); its
    per-frame mean ranks the frames.
    gt: frame index -> (H, W) uint8 {0, 1} ground-truth mask. These frames are not pseudo-labelled: their label
    is the GT with weight 1, and the teacher's predictions on them only measure pseudo-label quality.

    Pixels whose confidence is below their class threshold are ignored. Kept pixels are weighted by
    rescaled confidence, min_weight + (1 - min_weight) * (conf - thr) / (1 - thr): the weight starts at
    min_weight where the keep decision starts and reaches 1 at certainty, so it moves with each round's
    thresholds. (1 - uncertainty would fall steeply, 0.28 at p = 0.8, and depend on the uncertainty estimate's
    scale.) Frames without GT are ranked by mean uncertainty, ties by frame index; those with a kept-pixel
    ratio below cfg.min_kept_ratio, or whose predicted object area (p > 0.5) is outside
    [cfg.min_area_ratio, cfg.max_area_ratio] x the mean object area of the GT frames, are rejected, and the K
    most certain of the rest are kept. Rejected frames become all-ignore. The area rule matters because mean
    uncertainty alone ranks a frame where the teacher confidently sees no object first.
    """
    prob = np.asarray(prob, dtype=np.float32)
    uncertainty = np.asarray(uncertainty, dtype=np.float32)
    if prob.ndim != 3 or uncertainty.shape != prob.shape:
        raise ValueError(f"prob and uncertainty must both be (T, H, W), got {prob.shape} and {uncertainty.shape}")
    gt = dict(gt or {})
    _check_ground_truth(gt, prob.shape)
    frame_entropy = uncertainty.reshape(len(prob), -1).mean(axis=1, dtype=np.float64)
    if not np.isfinite(frame_entropy).all():
        bad = np.flatnonzero(~np.isfinite(frame_entropy)).tolist()
        raise ValueError(f"uncertainty is not finite on frames {bad}; the teacher output is broken")

    if cfg.enabled:
        label, weight = _pixel_labels(prob, thresholds, cfg)
    else:
        label, weight = predicted_foreground(prob).astype(np.uint8), np.ones(prob.shape, dtype=np.float32)
    kept_ratio = (label != IGNORE_LABEL).reshape(len(prob), -1).mean(axis=1)

    pseudo = teacher = QualityCounts()
    for t, mask in gt.items():
        pseudo += pseudo_label_quality(label[t], mask)
        teacher += teacher_quality(prob[t], mask)

    area = predicted_foreground(prob).reshape(len(prob), -1).mean(axis=1)
    gt_area = float(np.mean([mask.mean() for mask in gt.values()])) if gt else None
    frames = _choose_frames(frame_entropy, kept_ratio, area, gt_area, set(gt), cfg)
    for decision in frames:
        t = decision.frame_index
        if decision.source == "ground_truth":
            label[t], weight[t] = gt[t], 1.0
        elif not decision.kept:
            label[t], weight[t] = IGNORE_LABEL, 0.0
    return RefinedExpression(label, weight, frames, thresholds, pseudo, teacher)


def _check_ground_truth(gt: dict[int, np.ndarray], shape: tuple[int, ...]) -> None:
    for t, mask in gt.items():
        if not 0 <= t < shape[0]:
            raise ValueError(f"ground truth given for frame {t}, but the expression has {shape[0]} frames")
        if mask.shape != shape[1:]:
            raise ValueError(f"ground-truth mask of frame {t} is {mask.shape}, the predictions are {shape[1:]}")
        if mask.max(initial=0) > 1:
            raise ValueError(f"ground-truth mask of frame {t} must be binary 0/1 (see masks.object_mask)")


def _pixel_labels(prob: np.ndarray, thresholds: Thresholds, cfg: RefineConfig) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W) labels with ignore below the class thresholds, and their (T, H, W) weights."""
    fg = predicted_foreground(prob)
    conf = confidence(prob)
    threshold = np.where(fg, np.float32(thresholds.fg), np.float32(thresholds.bg))
    keep = conf >= threshold
    label = np.where(keep, fg.astype(np.uint8), np.uint8(IGNORE_LABEL))
    if cfg.weighting == "uniform":
        return label, keep.astype(np.float32)
    rescaled = (conf - threshold) / (1.0 - threshold)
    weight = np.where(keep, cfg.min_weight + (1.0 - cfg.min_weight) * rescaled, 0.0)
    return label, np.clip(weight, 0.0, 1.0).astype(np.float32)


def _area_problem(area: float, gt_area: float | None, cfg: RefineConfig) -> str | None:
    """Why a frame's predicted object area (share of its pixels) is implausible next to the GT frames', or None."""
    if gt_area is None or gt_area <= 0:
        return None
    ratio = area / gt_area
    too_small = ratio < cfg.min_area_ratio
    too_large = cfg.max_area_ratio is not None and ratio > cfg.max_area_ratio
    if not (too_small or too_large):
        return None
    bounds = f"[{cfg.min_area_ratio:g}, {'inf' if cfg.max_area_ratio is None else f'{cfg.max_area_ratio:g}'}]"
    return f"predicted object area {ratio:.2f}x the annotated frames' mean, outside {bounds}"


def _choose_frames(
    frame_entropy: np.ndarray,
    kept_ratio: np.ndarray,
    area: np.ndarray,
    gt_area: float | None,
    gt_frames: set[int],
    cfg: RefineConfig,
) -> tuple[FrameDecision, ...]:
    """One decision per frame: GT frames kept as GT; the others ranked by mean entropy, ties by index."""
    decisions = {
        t: FrameDecision(t, "ground_truth", True, "ground_truth", float(frame_entropy[t]), 1.0) for t in gt_frames
    }
    candidates = [t for t in range(len(frame_entropy)) if t not in gt_frames]
    candidates.sort(key=lambda t: (frame_entropy[t], t))
    k = cfg.frames_per_expression
    limit = len(candidates) if not cfg.enabled or k is None or k <= 0 else k
    kept = 0
    for rank, t in enumerate(candidates, start=1):
        ranked = f"rank {rank} of {len(candidates)} by mean entropy {frame_entropy[t]:.3f}"
        if not cfg.enabled:
            keep, reason = True, f"{ranked}; refinement disabled, every frame kept"
        elif kept_ratio[t] < cfg.min_kept_ratio:
            keep, reason = False, f"{ranked}; kept-pixel ratio {kept_ratio[t]:.2f} below min {cfg.min_kept_ratio:.2f}"
        elif problem := _area_problem(float(area[t]), gt_area, cfg):
            keep, reason = False, f"{ranked}; {problem}"
        elif kept >= limit:
            keep, reason = False, f"{ranked}; top {limit} already kept"
        else:
            keep, reason = True, ranked
        kept += keep
        decisions[t] = FrameDecision(t, "pseudo_label", keep, reason, float(frame_entropy[t]), float(kept_ratio[t]))
    return tuple(decisions[t] for t in sorted(decisions))
