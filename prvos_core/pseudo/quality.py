"""How good a round's pseudo-labels are, measured where ground truth exists.

The teacher also predicts the frames that have a ground-truth mask; refining those predictions as if they were
pseudo-labels and comparing with the mask gives the pseudo-label precision, recall and IoU of the foreground
class over the kept pixels, and the coverage (kept / all pixels). The raw teacher (p > 0.5, every pixel kept)
is measured the same way, so the gain of refinement is the difference. `prvos_core.pseudo.refine.RefineSummary` adds them
up over a round. `frames_quality` does both on any masked frames: the GT frames in refinement, and in the refine
stage the chosen pseudo-labelled frames against the masks training never sees
(`prvos_core.data.object_masks.scoring_masks`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import astuple, dataclass

import numpy as np

from prvos_core.labels import IGNORE_LABEL, binary_mask


@dataclass(frozen=True)
class QualityCounts:
    """Pixel counts of labels against ground truth, foreground = positive class; ignored pixels apart."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    ignored: int = 0
    ignored_object: int = 0  # of `ignored`, the pixels the ground truth calls object

    def __add__(self, other: QualityCounts) -> QualityCounts:
        return QualityCounts(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    @property
    def kept(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def total(self) -> int:
        return self.kept + self.ignored

    @property
    def precision(self) -> float | None:
        """tp / (tp + fp); None when nothing kept is labelled foreground."""
        return ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        """tp / (tp + fn) over kept pixels; None when no kept pixel is foreground in the ground truth."""
        return ratio(self.tp, self.tp + self.fn)

    @property
    def iou(self) -> float | None:
        """tp / (tp + fp + fn) over kept pixels; None when neither labels nor ground truth have foreground."""
        return ratio(self.tp, self.tp + self.fp + self.fn)

    @property
    def object_coverage(self) -> float | None:
        """tp / all ground-truth object pixels, ignored ones included: how much of the object is labelled object.
        Recall over kept pixels alone stays high when refinement ignores the parts of the object the teacher
        was unsure of; this does not. None when the ground truth has no object."""
        return ratio(self.tp, self.tp + self.fn + self.ignored_object)

    @property
    def coverage(self) -> float | None:
        """kept / total pixels; None when there are no pixels."""
        return ratio(self.kept, self.total)


def ratio(numerator: int, denominator: int) -> float | None:
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
    ignored_object = int(np.count_nonzero(~kept & truth))
    return QualityCounts(tp, fp, fn, n_kept - tp - fp - fn, label.size - n_kept, ignored_object)


def teacher_quality(prob: np.ndarray, gt_mask: np.ndarray) -> QualityCounts:
    """The raw teacher against ground truth: p > 0.5 is foreground, every pixel kept."""
    return pseudo_label_quality(binary_mask(prob), gt_mask)


def frames_quality(
    label: np.ndarray, prob: np.ndarray, masks: Mapping[int, np.ndarray]
) -> tuple[QualityCounts, QualityCounts]:
    """The refined labels and the raw teacher on some frames of an expression, against their masks.

    label: (T, H, W) label map (0, 1, 255); prob: (T, H, W) teacher foreground probability; masks: frame index ->
    (H, W) {0, 1} mask. Returns (pseudo-label counts, teacher counts) summed over the masked frames.
    """
    pseudo = teacher = QualityCounts()
    for t, mask in masks.items():
        pseudo += pseudo_label_quality(label[t], mask)
        teacher += teacher_quality(prob[t], mask)
    return pseudo, teacher


def quality_metrics(pseudo: QualityCounts, teacher: QualityCounts, suffix: str = "") -> dict[str, float | None]:
    """The refined labels' precision, recall, IoU and coverage and the raw teacher's precision, recall and IoU,
    named as a refine summary names them (`suffix` tells apart where they were scored, e.g. "_full")."""
    return {
        f"pseudo_precision{suffix}": pseudo.precision,
        f"pseudo_recall{suffix}": pseudo.recall,
        f"pseudo_iou{suffix}": pseudo.iou,
        f"pseudo_coverage{suffix}": pseudo.coverage,
        f"pseudo_object_coverage{suffix}": pseudo.object_coverage,
        f"teacher_precision{suffix}": teacher.precision,
        f"teacher_recall{suffix}": teacher.recall,
        f"teacher_iou{suffix}": teacher.iou,
    }
