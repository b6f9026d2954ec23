"""How good a round's pseudo-labels are, measured where ground truth exists.

The teacher also predicts the frames that have a ground-truth mask; refining those predictions as if they were
pseudo-labels and comparing with the mask gives the pseudo-label precision, recall and IoU of the foreground
class over the kept pixels, and the coverage (kept / all pixels). The raw teacher (p > 0.5, every pixel kept)
is measured the same way, so the gain of refinement is the difference. `RefineSummary` accumulates a round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from prvos_core.uncertainty import predicted_foreground

if TYPE_CHECKING:
    from prvos_core.refine import RefinedExpression, Thresholds

IGNORE_LABEL = 255  # label value of pixels and frames the loss ignores


@dataclass(frozen=True)
class QualityCounts:
    """Pixel counts of labels against ground truth, foreground = positive class; ignored pixels apart."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    ignored: int = 0

    def __add__(self, other: QualityCounts) -> QualityCounts:
        return QualityCounts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn, self.ignored + other.ignored
        )

    @property
    def kept(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def total(self) -> int:
        return self.kept + self.ignored

    @property
    def precision(self) -> float | None:
        """tp / (tp + fp); None when nothing kept is labelled foreground."""
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        """tp / (tp + fn) over kept pixels; None when no kept pixel is foreground in the ground truth."""
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def iou(self) -> float | None:
        """tp / (tp + fp + fn) over kept pixels; None when neither labels nor ground truth have foreground."""
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    @property
    def coverage(self) -> float | None:
        """kept / total pixels; None when there are no pixels."""
        return _ratio(self.kept, self.total)


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def pseudo_label_quality(label: np.ndarray, gt_mask: np.ndarray) -> QualityCounts:
    """Counts of a label map (0 background, 1 object, 255 ignore) against a {0, 1} ground-truth mask of the same
    shape (any, e.g. (H, W) or (T, H, W)). Only kept pixels (label != 255) enter tp/fp/fn/tn."""
    if label.shape != gt_mask.shape:
        raise ValueError(f"label {label.shape} and ground-truth mask {gt_mask.shape} differ in shape")
    kept = label != IGNORE_LABEL
    predicted = (label == 1) & kept
    truth = gt_mask.astype(bool)
    tp = int(np.count_nonzero(predicted & truth))
    fp = int(np.count_nonzero(predicted & ~truth))
    fn = int(np.count_nonzero(kept & ~predicted & truth))
    n_kept = int(np.count_nonzero(kept))
    return QualityCounts(tp=tp, fp=fp, fn=fn, tn=n_kept - tp - fp - fn, ignored=label.size - n_kept)


def teacher_quality(prob: np.ndarray, gt_mask: np.ndarray) -> QualityCounts:
    """The raw teacher against ground truth: p > 0.5 is foreground, every pixel kept."""
    return pseudo_label_quality(predicted_foreground(np.asarray(prob)).astype(np.uint8), gt_mask)


class RefineSummary:
    """A round's refinement report, accumulated expression by expression (`add`) and task by task (`merge`).

    kept_ratio is over the pixels of the kept pseudo-labelled frames (what the next student trains on);
    pseudo_* and teacher_* compare, on the ground-truth frames, the refined labels and the raw teacher with GT.
    """

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self.expressions = 0
        self.frames = 0
        self.ground_truth_frames = 0
        self.pseudo_frames = 0
        self.rejected_frames = 0
        self.pseudo_pixels = 0
        self.pseudo_pixels_kept = 0
        self.pseudo_quality = QualityCounts()
        self.teacher_quality = QualityCounts()

    def add(self, refined: RefinedExpression) -> None:
        if refined.thresholds != self.thresholds:
            raise ValueError(f"expression refined with {refined.thresholds}, this summary is for {self.thresholds}")
        self.expressions += 1
        self.frames += len(refined.frames)
        for decision in refined.frames:
            if decision.source == "ground_truth":
                self.ground_truth_frames += 1
            elif decision.kept:
                self.pseudo_frames += 1
                frame = refined.label[decision.frame_index]
                self.pseudo_pixels += frame.size
                self.pseudo_pixels_kept += int(np.count_nonzero(frame != IGNORE_LABEL))
            else:
                self.rejected_frames += 1
        self.pseudo_quality += refined.pseudo_quality
        self.teacher_quality += refined.teacher_quality

    def merge(self, other: RefineSummary) -> None:
        if other.thresholds != self.thresholds:
            raise ValueError(f"cannot merge summaries for {other.thresholds} and {self.thresholds}")
        for name in (
            "expressions",
            "frames",
            "ground_truth_frames",
            "pseudo_frames",
            "rejected_frames",
            "pseudo_pixels",
            "pseudo_pixels_kept",
            "pseudo_quality",
            "teacher_quality",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_dict(self) -> dict[str, float | int | None]:
        """Flat metrics (None where undefined, e.g. precision with no ground-truth frames)."""
        return {
            "threshold_fg": self.thresholds.fg,
            "threshold_bg": self.thresholds.bg,
            "expressions": self.expressions,
            "frames": self.frames,
            "frames_ground_truth": self.ground_truth_frames,
            "frames_pseudo_labelled": self.pseudo_frames,
            "frames_rejected": self.rejected_frames,
            "kept_ratio": _ratio(self.pseudo_pixels_kept, self.pseudo_pixels),
            "pseudo_precision": self.pseudo_quality.precision,
            "pseudo_recall": self.pseudo_quality.recall,
            "pseudo_iou": self.pseudo_quality.iou,
            "pseudo_coverage": self.pseudo_quality.coverage,
            "teacher_precision": self.teacher_quality.precision,
            "teacher_recall": self.teacher_quality.recall,
            "teacher_iou": self.teacher_quality.iou,
        }
