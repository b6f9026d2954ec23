"""Evaluation metrics of RVOS, defined exactly as the DAVIS-2017 evaluation toolkit defines them.

J is the region similarity (IoU) and F the boundary F-measure of `davis2017/metrics.py` in the
davisvideochallenge/davis2017-evaluation toolkit, with its conventions kept on purpose so that numbers compare
with published ones:

- J of an empty union is 1 (nothing to find, nothing found).
- Boundaries come from its `seg2bmap`: a pixel is on the boundary when it differs from its east, south or
  south-east neighbour, so the map sits half a pixel towards the origin. Outside the image counts as
  background, except that the last row is compared with its east neighbour only, the last column with its
  south neighbour only, and the bottom-right pixel is never a boundary. A mask covering the whole frame
  therefore has no boundary at all.
- A boundary pixel matches if the other boundary lies within a disk of radius `ceil(bound_th * diagonal)`
  pixels (`bound_th` < 1) or `bound_th` pixels (`bound_th` >= 1); the disk is scikit-image's `disk` footprint,
  rebuilt here so that the package does not depend on scikit-image.
- No boundary on either side: precision = recall = 1 (F = 1); only one side empty: F = 0.
- Void pixels are removed from both masks before the boundaries are taken, and from the IoU counts.

The toolkit's optional rescaling of the boundary map to another width and height is left out: its evaluation
never uses it. On top of the per-frame measures: a per-expression summary (`evaluate_expression`), the
benchmark table over expressions (`summarize`: J, F, J&F, P@0.5..0.9), the table of each group of expressions and
the mean over groups (`summarize_groups`: Ref-DAVIS17's annotators) and the overall IoU (cumulative intersection
over cumulative union, from masks or from per-expression counts).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from typing import TypedDict

import cv2
import numpy as np

# DAVIS default: 0.8% of the image diagonal (8 pixels at 854x480).
DEFAULT_BOUND_TH = 0.008
DEFAULT_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


class JFResult(TypedDict):
    """J and F of one expression: means over its frames, their average, and the per-frame values (T,)."""

    J: float
    F: float
    JF: float
    J_per_frame: np.ndarray
    F_per_frame: np.ndarray


def db_eval_iou(
    annotation: np.ndarray, segmentation: np.ndarray, void_pixels: np.ndarray | None = None
) -> float | np.ndarray:
    """Region similarity J: intersection over union of the ground truth and the prediction.

    annotation, segmentation, void_pixels: (H, W) or (T, H, W), any dtype (non-zero is foreground / void).
    Returns a float for (H, W) input and a float64 array (T,) for (T, H, W) input. An empty union gives 1.
    """
    gt, pred, void = _as_masks(annotation, segmentation, void_pixels)
    counted = ~void
    intersection = np.count_nonzero(gt & pred & counted, axis=(-2, -1))
    union = np.count_nonzero((gt | pred) & counted, axis=(-2, -1))
    iou = np.divide(intersection, union, out=np.ones(np.shape(union), dtype=np.float64), where=union > 0)
    return float(iou) if iou.ndim == 0 else iou


def db_eval_boundary(
    annotation: np.ndarray,
    segmentation: np.ndarray,
    void_pixels: np.ndarray | None = None,
    bound_th: float = DEFAULT_BOUND_TH,
) -> float | np.ndarray:
    """Boundary F-measure F between the ground truth and the prediction.

    annotation, segmentation, void_pixels: (H, W) or (T, H, W), any dtype (non-zero is foreground / void).
    bound_th: match tolerance, a fraction of the image diagonal if < 1, else a radius in pixels.
    Returns a float for (H, W) input and a float64 array (T,) for (T, H, W) input.
    """
    gt, pred, void = _as_masks(annotation, segmentation, void_pixels)
    footprint = disk_footprint(boundary_radius(gt.shape[-2:], bound_th))
    kept = ~void
    gt_boundary = seg2bmap(gt & kept)
    pred_boundary = seg2bmap(pred & kept)
    gt_near = _dilate(gt_boundary, footprint)
    pred_near = _dilate(pred_boundary, footprint)

    n_gt = np.count_nonzero(gt_boundary, axis=(-2, -1))
    n_pred = np.count_nonzero(pred_boundary, axis=(-2, -1))
    pred_matched = np.count_nonzero(pred_boundary & gt_near, axis=(-2, -1))
    gt_matched = np.count_nonzero(gt_boundary & pred_near, axis=(-2, -1))
    # An empty boundary has precision (or recall) 1 by the toolkit's rule; when only the other side is empty,
    # nothing can match it, so the general ratio already gives the toolkit's 0 there.
    precision = np.divide(pred_matched, n_pred, out=np.ones(np.shape(n_pred)), where=n_pred > 0)
    recall = np.divide(gt_matched, n_gt, out=np.ones(np.shape(n_gt)), where=n_gt > 0)
    total = precision + recall
    f_measure = np.divide(2 * precision * recall, total, out=np.zeros(np.shape(total)), where=total > 0)
    return float(f_measure) if f_measure.ndim == 0 else f_measure


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """The toolkit's one-pixel-wide boundary map of a binary mask.

    seg: (..., H, W), any dtype (non-zero is foreground). Returns bool (..., H, W): True where the pixel
    differs from its east, south or south-east neighbour (outside the image counts as background), with the
    toolkit's edge rules: the last row looks east only, the last column south only, the last pixel is False.
    """
    seg = np.asarray(seg).astype(bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[..., :, :-1] = seg[..., :, 1:]
    south[..., :-1, :] = seg[..., 1:, :]
    south_east[..., :-1, :-1] = seg[..., 1:, 1:]

    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[..., -1, :] = seg[..., -1, :] ^ east[..., -1, :]
    bmap[..., :, -1] = seg[..., :, -1] ^ south[..., :, -1]
    bmap[..., -1, -1] = False
    return bmap


def boundary_radius(shape: Sequence[int], bound_th: float = DEFAULT_BOUND_TH) -> float:
    """Match tolerance in pixels for a frame of shape (H, W): bound_th itself if >= 1, else
    ceil(bound_th * sqrt(H^2 + W^2))."""
    if bound_th < 0:
        raise ValueError(f"bound_th must be >= 0 (a fraction of the diagonal or a pixel radius), got {bound_th}")
    if bound_th >= 1:
        return float(bound_th)
    height, width = shape
    return float(math.ceil(bound_th * math.hypot(height, width)))


def disk_footprint(radius: float) -> np.ndarray:
    """scikit-image's `disk(radius)`: uint8 grid over arange(-radius, radius + 1) squared, 1 where
    x^2 + y^2 <= radius^2 (for an integer radius r: (2r + 1, 2r + 1))."""
    offsets = np.arange(-radius, radius + 1)
    rows, cols = np.meshgrid(offsets, offsets, indexing="ij")
    return (rows**2 + cols**2 <= radius**2).astype(np.uint8)


def evaluate_expression(
    gt: np.ndarray,
    pred: np.ndarray,
    void_pixels: np.ndarray | None = None,
    bound_th: float = DEFAULT_BOUND_TH,
) -> JFResult:
    """J and F of one expression over its frames.

    gt, pred, void_pixels: (T, H, W), any dtype (non-zero is foreground / void), T >= 1.
    J and F are the means over the T frames, JF = (J + F) / 2.
    """
    if np.ndim(gt) != 3 or np.shape(gt)[0] == 0:
        raise ValueError(f"evaluate_expression expects (T, H, W) masks with T >= 1, got shape {np.shape(gt)}")
    j_per_frame = db_eval_iou(gt, pred, void_pixels)
    f_per_frame = db_eval_boundary(gt, pred, void_pixels, bound_th)
    j_mean = float(np.mean(j_per_frame))
    f_mean = float(np.mean(f_per_frame))
    return JFResult(J=j_mean, F=f_mean, JF=(j_mean + f_mean) / 2, J_per_frame=j_per_frame, F_per_frame=f_per_frame)


def summarize(
    per_expression_J: Sequence[float],
    per_expression_F: Sequence[float],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[str, float]:
    """The benchmark table over expressions.

    per_expression_J, per_expression_F: the mean J and F of each expression, same length >= 1.
    Returns J, F and J&F (means over expressions) and P@t for each threshold t: the share of expressions
    whose J is >= t (keys formatted as "P@0.5").
    """
    j_values = np.asarray(per_expression_J, dtype=np.float64)
    f_values = np.asarray(per_expression_F, dtype=np.float64)
    if j_values.ndim != 1 or j_values.shape != f_values.shape or j_values.size == 0:
        raise ValueError(
            f"summarize needs one J and one F per expression (equal, non-zero lengths), "
            f"got {j_values.shape} and {f_values.shape}"
        )
    j_mean = float(j_values.mean())
    f_mean = float(f_values.mean())
    table = {"J": j_mean, "F": f_mean, "J&F": (j_mean + f_mean) / 2}
    for threshold in thresholds:
        table[f"P@{threshold:g}"] = float(np.mean(j_values >= threshold))
    return table


def summarize_groups(
    groups: Sequence[Hashable],
    per_expression_J: Sequence[float],
    per_expression_F: Sequence[float],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> tuple[dict[Hashable, dict[str, float]], dict[str, float]]:
    """The benchmark table (`summarize`) of each group of expressions, and the mean of each entry over the groups.

    groups: each expression's group, e.g. the Ref-DAVIS17 annotator who wrote it (the community protocol scores
    each annotator's expressions and reports their mean). Returns ({group: table}, mean table), groups sorted.
    """
    if not len(groups) == len(per_expression_J) == len(per_expression_F):
        raise ValueError(f"summarize_groups needs one group, J and F per expression, got {len(groups)} groups")
    tables = {}
    for group in sorted(set(groups)):
        own = [index for index, value in enumerate(groups) if value == group]
        tables[group] = summarize([per_expression_J[i] for i in own], [per_expression_F[i] for i in own], thresholds)
    keys = next(iter(tables.values())).keys() if tables else ()
    return tables, {key: float(np.mean([table[key] for table in tables.values()])) for key in keys}


def overall_iou(gt_stack: Iterable[np.ndarray], pred_stack: Iterable[np.ndarray]) -> float:
    """Cumulative intersection over cumulative union across all frames of all expressions.

    gt_stack, pred_stack: paired sequences (one item per expression) of (T, H, W) or (H, W) masks; the sizes
    may differ between expressions. An empty cumulative union gives 1, as J does for one frame.
    """
    gt_list = list(gt_stack)
    pred_list = list(pred_stack)
    if len(gt_list) != len(pred_list):
        raise ValueError(
            f"overall_iou needs paired stacks, got {len(gt_list)} ground truths and {len(pred_list)} predictions"
        )
    counts = [iou_counts(gt, pred) for gt, pred in zip(gt_list, pred_list, strict=True)]
    return cumulative_iou([i for i, _ in counts], [u for _, u in counts])


def iou_counts(annotation: np.ndarray, segmentation: np.ndarray) -> tuple[int, int]:
    """(intersection, union) pixel counts of one expression's masks, (T, H, W) or (H, W): what `overall_iou`
    accumulates, for callers that see one expression at a time."""
    gt, pred, _ = _as_masks(annotation, segmentation, None)
    return int(np.count_nonzero(gt & pred)), int(np.count_nonzero(gt | pred))


def cumulative_iou(intersections: Iterable[int], unions: Iterable[int]) -> float:
    """The overall IoU from per-expression `iou_counts`: sum of intersections over sum of unions (1 when the
    cumulative union is empty)."""
    intersection, union = sum(intersections), sum(unions)
    return intersection / union if union > 0 else 1.0


def _as_masks(
    annotation: np.ndarray, segmentation: np.ndarray, void_pixels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean ground truth, prediction and void masks of one shape, (H, W) or (T, H, W)."""
    gt = np.asarray(annotation).astype(bool)
    pred = np.asarray(segmentation).astype(bool)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} shapes differ")
    if gt.ndim not in (2, 3):
        raise ValueError(f"masks must be (H, W) or (T, H, W), got {gt.ndim} dimensions")
    if void_pixels is None:
        return gt, pred, np.zeros_like(gt)
    void = np.asarray(void_pixels).astype(bool)
    if void.shape != gt.shape:
        raise ValueError(f"void pixels {void.shape} and ground truth {gt.shape} shapes differ")
    return gt, pred, void


def _dilate(bmap: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Binary dilation of each (H, W) frame of a bool (..., H, W) map; pixels outside count as background."""
    frames = bmap.reshape(-1, *bmap.shape[-2:]).astype(np.uint8)
    dilated = np.stack([cv2.dilate(frame, footprint) for frame in frames])
    return dilated.reshape(bmap.shape).astype(bool)
