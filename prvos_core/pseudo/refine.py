"""Uncertainty-aware refinement of the teacher's pseudo-labels, applied once per round.

A round refines in two passes, because its thresholds depend on all of its predictions (millions of frames):

1. every task adds its expressions' foreground probabilities to a `ConfidenceHistogram`; the task histograms
   are merged and `choose_thresholds` picks one confidence threshold per class (foreground, background);
2. `refine_expression` turns each expression's probability and uncertainty maps into per-pixel labels
   (0 background, 1 object, 255 ignore), per-pixel loss weights and a frame choice with reasons, and measures
   on its ground-truth frames how good the pseudo-labels would have been (`prvos_core.pseudo.quality`).

`RefineSection(enabled=False)` (config `refine.enabled: false`) is the "no refinement" ablation: every pixel kept with weight 1, every frame kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from prvos_core.config import RefineSection
from prvos_core.labels import IGNORE_LABEL, confidence, predicted_foreground
from prvos_core.pseudo.quality import QualityCounts, frames_quality, quality_metrics, ratio
from prvos_core.pseudo.store import FrameDecision
from prvos_core.pseudo.thresholds import Thresholds


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
    cfg: RefineSection,
    gt: Mapping[int, np.ndarray] | None = None,
) -> RefinedExpression:
    """Refine one expression's teacher predictions into labels, weights and a frame choice.

    prob: (T, H, W) float foreground probability of the teacher on every frame.
    uncertainty: (T, H, W) float per-pixel uncertainty (binary entropy of the teacher's, or flip-averaged, probability); its
    per-frame mean ranks the frames.
    gt: frame index -> (H, W) uint8 {0, 1} ground-truth mask. These frames are not pseudo-labelled: their label
    is the GT with weight 1, and the teacher's predictions on them only measure pseudo-label quality.

    Pixels whose confidence is below their class threshold are ignored. Kept pixels are weighted by
    rescaled confidence, min_weight + (1 - min_weight) * (conf - thr) / (1 - thr): the weight starts at
    min_weight where the keep decision starts and reaches 1 at certainty, so it moves with each round's
    thresholds. (1 - uncertainty would fall steeply, 0.28 at p = 0.8, and depend on the uncertainty estimate's
    scale.) Frames without GT are ranked by mean uncertainty, ties by frame index; those that fail a rule of
    `_frame_problems` are rejected (kept-pixel ratio, object area, and without any GT frame temporal
    consistency), and the K most certain of the rest are kept. Rejected frames become all-ignore. The area rule
    matters because mean uncertainty alone ranks a frame where the teacher confidently sees no object first.
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

    pseudo, teacher = frames_quality(label, prob, gt)
    problems = _frame_problems(predicted_foreground(prob), kept_ratio, gt, cfg) if cfg.enabled else {}
    frames = _choose_frames(frame_entropy, kept_ratio, problems, set(gt), cfg)
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


def _pixel_labels(prob: np.ndarray, thresholds: Thresholds, cfg: RefineSection) -> tuple[np.ndarray, np.ndarray]:
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


def _frame_problems(
    foreground: np.ndarray, kept_ratio: np.ndarray, gt: dict[int, np.ndarray], cfg: RefineSection
) -> dict[int, str]:
    """Frame index -> why that frame cannot be a pseudo-label; GT frames and plausible frames are absent.

    The first failed rule names the problem: its kept-pixel ratio below cfg.min_kept_ratio; its
    predicted object area (p > 0.5 share) outside [cfg.min_area_ratio, cfg.max_area_ratio] x a reference area;
    for an expression without any GT frame, the best IoU of its predicted mask with its neighbours' below
    cfg.min_temporal_iou (`temporal_iou`). The reference area is the GT frames' mean object area, or without
    GT the median predicted area over the expression's frames: most frames show the object at about its size,
    so one where the teacher lost it or took in a neighbour stands out. Expressions with GT keep exactly the
    first two rules, checked against their annotation. A median of 0 (the teacher sees no object in most
    frames) leaves nothing to compare with: then, unless the area bounds are both off, every frame is rejected.
    """
    frames = [t for t in range(len(foreground)) if t not in gt]
    area = foreground.reshape(len(foreground), -1).mean(axis=1)
    if gt:
        reference, named = float(np.mean([mask.mean() for mask in gt.values()])), "the annotated frames' mean"
        consistency = None
    else:
        reference, named = float(np.median(area)), "the expression's median"
        consistency = temporal_iou(foreground)
        area_rule = cfg.min_area_ratio > 0 or cfg.max_area_ratio is not None
        if area_rule and reference == 0:
            return {t: "teacher finds no object (predicted object area 0 on most frames)" for t in frames}
    problems = {}
    for t in frames:
        if kept_ratio[t] < cfg.min_kept_ratio:
            problems[t] = f"kept-pixel ratio {kept_ratio[t]:.2f} below min {cfg.min_kept_ratio:.2f}"
        elif problem := _area_problem(float(area[t]), reference, named, cfg):
            problems[t] = problem
        elif consistency is not None and consistency[t] < cfg.min_temporal_iou:
            problems[t] = (
                f"predicted mask's best IoU {consistency[t]:.2f} with the neighbouring frames' below min "
                f"{cfg.min_temporal_iou:.2f}"
            )
    return problems


def _area_problem(area: float, reference: float, named: str, cfg: RefineSection) -> str | None:
    """Why a frame's predicted object area (share of its pixels) is implausible next to `reference`, or None."""
    if reference <= 0:
        return None
    ratio = area / reference
    too_small = ratio < cfg.min_area_ratio
    too_large = cfg.max_area_ratio is not None and ratio > cfg.max_area_ratio
    if not (too_small or too_large):
        return None
    bounds = f"[{cfg.min_area_ratio:g}, {'inf' if cfg.max_area_ratio is None else f'{cfg.max_area_ratio:g}'}]"
    return f"predicted object area {ratio:.2f}x {named}, outside {bounds}"


def temporal_iou(foreground: np.ndarray) -> np.ndarray:
    """(T, H, W) bool predicted masks -> (T,) float64: the higher IoU of each frame's mask with the previous and
    the next frame's (the one neighbour at either end; nan for a one-frame expression, which has none).

    The higher of the two, not their mean: a frame where the teacher jumped disagrees with both neighbours, while
    the frames beside it still agree with their other neighbour and stay. Two empty masks have IoU 1: they agree,
    and whether the object should be there is the area rule's question, not this one's. One empty mask beside a
    non-empty one has IoU 0.
    """
    flat = foreground.reshape(len(foreground), -1)
    intersection = np.count_nonzero(flat[1:] & flat[:-1], axis=1)
    union = np.count_nonzero(flat[1:] | flat[:-1], axis=1)
    pair = np.where(union > 0, intersection / np.maximum(union, 1), 1.0)
    best = np.full(len(flat), np.nan)
    best[:-1] = pair
    best[1:] = np.fmax(best[1:], pair)
    return best


def _choose_frames(
    frame_entropy: np.ndarray,
    kept_ratio: np.ndarray,
    problems: dict[int, str],
    gt_frames: set[int],
    cfg: RefineSection,
) -> tuple[FrameDecision, ...]:
    """One decision per frame: GT frames kept as GT; the others ranked by mean entropy, ties by index, and those
    with a problem (`_frame_problems`) rejected. Of the rest, `frame_choice` "certain" keeps the K most certain;
    "spread" cuts the video into K equal spans and keeps the most certain frame of each: the most certain frames
    are the ones next to a ground-truth frame (measured in regime F: 119 of 193 chosen frames were frames 1-3),
    near-copies of it that teach the student little."""
    decisions = {
        t: FrameDecision(t, "ground_truth", True, None, float(frame_entropy[t]), 1.0, "ground_truth") for t in gt_frames
    }
    candidates = [t for t in range(len(frame_entropy)) if t not in gt_frames]
    candidates.sort(key=lambda t: (frame_entropy[t], t))
    k = cfg.frames_per_expression
    limit = len(candidates) if not cfg.enabled or k is None or k <= 0 else k
    spread = cfg.frame_choice == "spread" and limit < len(candidates)
    span_of = {t: t * limit // len(frame_entropy) for t in candidates} if spread else {}
    kept, spans_taken = 0, set()
    for rank, t in enumerate(candidates, start=1):
        ranked = f"rank {rank} of {len(candidates)} by mean entropy {frame_entropy[t]:.3f}"
        if not cfg.enabled:
            keep, reason = True, f"{ranked}; refinement disabled, every frame kept"
        elif t in problems:
            keep, reason = False, f"{ranked}; {problems[t]}"
        elif spread and span_of[t] in spans_taken:
            keep, reason = False, f"{ranked}; a more certain frame of span {span_of[t] + 1}/{limit} already kept"
        elif kept >= limit:
            keep, reason = False, f"{ranked}; top {limit} already kept"
        else:
            keep, reason = True, ranked + (f", span {span_of[t] + 1}/{limit}" if spread else "")
            spans_taken.add(span_of.get(t))
        kept += keep
        decisions[t] = FrameDecision(
            t, "pseudo_label", keep, rank, float(frame_entropy[t]), float(kept_ratio[t]), reason
        )
    return tuple(decisions[t] for t in sorted(decisions))


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
            "kept_ratio": ratio(self.pseudo_pixels_kept, self.pseudo_pixels),
            **quality_metrics(self.pseudo_quality, self.teacher_quality),
        }
