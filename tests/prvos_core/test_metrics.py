"""Tests of prvos_core.metrics: hand-computed J/F cases and agreement with an independent reference.

The reference below is written from the DAVIS-2017 toolkit's definitions (davis2017/metrics.py) pixel by
pixel with plain loops and scipy.ndimage, deliberately unlike the vectorised module.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from prvos_core.metrics import (
    boundary_radius,
    cumulative_iou,
    db_eval_boundary,
    db_eval_iou,
    disk_footprint,
    evaluate_expression,
    iou_counts,
    overall_iou,
    seg2bmap,
    summarize,
    summarize_groups,
)

# ---------------------------------------------------------------- independent reference (toolkit definitions)


def ref_seg2bmap(seg: np.ndarray) -> np.ndarray:
    """Pixel-by-pixel boundary map: compare with E, S, SE neighbours; last row E only, last column S only."""
    height, width = seg.shape
    fg = [[bool(seg[y, x]) for x in range(width)] for y in range(height)]

    def value(y: int, x: int) -> bool:
        return fg[y][x] if y < height and x < width else False

    bmap = np.zeros((height, width), dtype=bool)
    for y in range(height):
        for x in range(width):
            here = fg[y][x]
            if y == height - 1 and x == width - 1:
                edge = False
            elif y == height - 1:
                edge = here != value(y, x + 1)
            elif x == width - 1:
                edge = here != value(y + 1, x)
            else:
                edge = here != value(y, x + 1) or here != value(y + 1, x) or here != value(y + 1, x + 1)
            bmap[y, x] = edge
    return bmap


def ref_disk(radius: int) -> np.ndarray:
    size = 2 * radius + 1
    disk = np.zeros((size, size), dtype=bool)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            disk[dy + radius, dx + radius] = dx * dx + dy * dy <= radius * radius
    return disk


def ref_f_measure(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None, bound_th: float) -> float:
    height, width = gt.shape
    radius = bound_th if bound_th >= 1 else math.ceil(bound_th * math.sqrt(height**2 + width**2))
    keep = np.ones_like(gt, dtype=bool) if void is None else ~void.astype(bool)
    gt_b = ref_seg2bmap(gt.astype(bool) & keep)
    pred_b = ref_seg2bmap(pred.astype(bool) & keep)
    disk = ref_disk(int(radius))
    gt_dil = ndimage.binary_dilation(gt_b, structure=disk)
    pred_dil = ndimage.binary_dilation(pred_b, structure=disk)
    n_pred, n_gt = int(pred_b.sum()), int(gt_b.sum())
    if n_pred == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_pred > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = int((pred_b & gt_dil).sum()) / n_pred
        recall = int((gt_b & pred_dil).sum()) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def ref_iou(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None) -> float:
    inter = union = 0
    for g, p, v in zip(gt.ravel(), pred.ravel(), np.zeros(gt.size) if void is None else void.ravel(), strict=True):
        if v:
            continue
        inter += bool(g) and bool(p)
        union += bool(g) or bool(p)
    return 1.0 if union == 0 else inter / union


# ---------------------------------------------------------------- helpers


def square(shape: tuple[int, int], top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def smooth_blob(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=min(shape) / 8)
    return field > np.quantile(field, rng.uniform(0.4, 0.9))


# ---------------------------------------------------------------- hand-computed cases


def test_empty_gt_and_empty_prediction_score_one():
    empty = np.zeros((40, 30), dtype=np.uint8)
    assert db_eval_iou(empty, empty) == 1.0
    assert db_eval_boundary(empty, empty) == 1.0


def test_empty_gt_against_a_prediction_scores_zero():
    empty = np.zeros((40, 30), dtype=bool)
    pred = square((40, 30), 10, 10, 8)
    assert db_eval_iou(empty, pred) == 0.0
    assert db_eval_boundary(empty, pred) == 0.0
    # The other way round too: missing the object entirely.
    assert db_eval_iou(pred, empty) == 0.0
    assert db_eval_boundary(pred, empty) == 0.0


def test_full_masks_have_no_boundary_in_the_toolkit():
    full = np.ones((20, 25), dtype=bool)
    empty = np.zeros_like(full)
    assert db_eval_iou(full, full) == 1.0
    assert db_eval_boundary(full, full) == 1.0
    assert not seg2bmap(full).any()
    # Toolkit quirk, kept on purpose: a full-frame mask has no boundary, so an empty prediction gets F = 1.
    assert db_eval_iou(full, empty) == 0.0
    assert db_eval_boundary(full, empty) == 1.0
    half = full.copy()
    half[:, 12:] = False
    assert db_eval_iou(full, half) == pytest.approx(12 / 25)
    # Only the prediction has a boundary (column 11), so precision 0 and F = 0.
    assert db_eval_boundary(full, half) == 0.0


def test_square_shifted_by_one_pixel():
    gt = square((100, 100), 40, 40, 20)
    pred = square((100, 100), 40, 41, 20)
    # 20 rows overlap in 19 columns; the union spans 21 columns.
    assert db_eval_iou(gt, pred) == pytest.approx(19 * 20 / (21 * 20), abs=1e-12)
    # Tolerance ceil(0.008 * 141.4) = 2 pixels >= the shift: every boundary pixel matches.
    assert boundary_radius((100, 100)) == 2
    assert db_eval_boundary(gt, pred) == 1.0
    assert db_eval_boundary(gt, pred, bound_th=1) == 1.0
    # Zero tolerance: each square's boundary has 80 pixels (inner L of 39 on the bottom/right, outer L of 41
    # on the top/left); the shifted maps share only row 39 (cols 40..59) and row 59 (cols 40..59): 40 pixels.
    assert int(seg2bmap(gt).sum()) == 80
    assert db_eval_boundary(gt, pred, bound_th=0) == pytest.approx(0.5, abs=1e-12)


def test_thin_line():
    gt = np.zeros((32, 32), dtype=bool)
    gt[10, 5:15] = True
    below = np.roll(gt, 1, axis=0)
    # Boundary: the 10 line pixels, row 9 cols 4..14 (11) and (10, 4): 22 pixels.
    assert int(seg2bmap(gt).sum()) == 22
    assert db_eval_iou(gt, gt) == 1.0
    assert db_eval_boundary(gt, gt) == 1.0
    # One row lower: no overlap at all, yet every boundary pixel is within the 1-pixel tolerance
    # (ceil(0.008 * 45.3) = 1).
    assert db_eval_iou(gt, below) == 0.0
    assert boundary_radius((32, 32)) == 1
    assert db_eval_boundary(gt, below) == 1.0
    # Exact matching: the maps share row 10 cols 4..14, 11 of 22 pixels each side.
    assert db_eval_boundary(gt, below, bound_th=0) == pytest.approx(0.5, abs=1e-12)
    assert db_eval_boundary(gt, np.zeros_like(gt)) == 0.0


def test_seg2bmap_on_hand_drawn_masks():
    dot = np.zeros((5, 5), dtype=np.uint8)
    dot[2, 2] = 1
    expected_dot = np.zeros((5, 5), dtype=bool)
    expected_dot[1:3, 1:3] = True  # the pixel and its N, W, NW neighbours: offset towards the origin
    np.testing.assert_array_equal(seg2bmap(dot), expected_dot)

    right_column = np.zeros((4, 4), dtype=np.uint8)
    right_column[:, 3] = 255
    expected_right = np.zeros((4, 4), dtype=bool)
    expected_right[:, 2] = True  # the mask's own last column is compared southwards only: never a boundary
    np.testing.assert_array_equal(seg2bmap(right_column), expected_right)

    bottom_row = np.zeros((4, 5), dtype=bool)
    bottom_row[3, 1:4] = True
    expected_bottom = np.zeros((4, 5), dtype=bool)
    expected_bottom[2, 0:4] = True  # row above: S or SE neighbour differs
    expected_bottom[3, 0] = True  # east neighbour differs
    expected_bottom[3, 3] = True  # last row, east neighbour is background
    np.testing.assert_array_equal(seg2bmap(bottom_row), expected_bottom)

    ell = np.array(
        [
            [0, 0, 0, 0, 0, 0],
            [0, 1, 0, 0, 0, 0],
            [0, 1, 0, 0, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 0],
        ]
    )
    expected_ell = np.array(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(seg2bmap(ell), expected_ell)
    for mask in (dot, right_column, bottom_row, ell):
        np.testing.assert_array_equal(seg2bmap(mask), ref_seg2bmap(mask))


def test_disk_footprint_matches_scikit_image_disk():
    np.testing.assert_array_equal(disk_footprint(0), [[1]])
    np.testing.assert_array_equal(disk_footprint(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    np.testing.assert_array_equal(
        disk_footprint(2),
        [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]],
    )
    for radius in range(10):
        np.testing.assert_array_equal(disk_footprint(float(radius)), ref_disk(radius))
    # DAVIS frames (854x480): 0.008 * 979.7 = 7.84, rounded up to 8 pixels.
    assert boundary_radius((480, 854)) == 8
    assert boundary_radius((480, 854), bound_th=3) == 3
    with pytest.raises(ValueError, match="bound_th"):
        boundary_radius((480, 854), bound_th=-0.1)


def test_void_pixels_are_left_out():
    gt = square((50, 50), 10, 10, 15)
    extra = square((50, 50), 30, 30, 10)
    pred = gt | extra
    assert db_eval_iou(gt, pred) == pytest.approx(225 / 325)
    assert db_eval_iou(gt, pred, void_pixels=extra) == 1.0
    assert db_eval_boundary(gt, pred) < 1.0
    assert db_eval_boundary(gt, pred, void_pixels=extra) == 1.0


def test_frame_stacks_give_per_frame_values():
    rng = np.random.default_rng(3)
    gt = np.stack([smooth_blob(rng, (41, 57)) for _ in range(4)])
    pred = np.stack([smooth_blob(rng, (41, 57)) for _ in range(3)] + [np.zeros((41, 57), dtype=bool)])
    j = db_eval_iou(gt, pred)
    f = db_eval_boundary(gt, pred)
    assert j.shape == f.shape == (4,)
    for t in range(4):
        assert j[t] == db_eval_iou(gt[t], pred[t])
        assert f[t] == db_eval_boundary(gt[t], pred[t])
    result = evaluate_expression(gt.astype(np.uint8) * 255, pred)
    assert result["J"] == pytest.approx(j.mean())
    assert result["F"] == pytest.approx(f.mean())
    assert result["JF"] == pytest.approx((j.mean() + f.mean()) / 2)
    np.testing.assert_array_equal(result["J_per_frame"], j)
    np.testing.assert_array_equal(result["F_per_frame"], f)


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="shapes differ"):
        db_eval_iou(np.zeros((4, 5)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="void pixels"):
        db_eval_boundary(np.zeros((4, 5)), np.zeros((4, 5)), void_pixels=np.zeros((4, 4)))
    with pytest.raises(ValueError, match="dimensions"):
        db_eval_boundary(np.zeros((1, 2, 4, 5)), np.zeros((1, 2, 4, 5)))
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        evaluate_expression(np.zeros((4, 5)), np.zeros((4, 5)))


# ---------------------------------------------------------------- summaries


def test_summarize_precision_at_thresholds():
    per_j = [0.45, 0.5, 0.65, 0.8, 0.95]
    per_f = [0.5, 0.6, 0.7, 0.8, 0.9]
    table = summarize(per_j, per_f)
    assert table["J"] == pytest.approx(0.67)
    assert table["F"] == pytest.approx(0.70)
    assert table["J&F"] == pytest.approx(0.685)
    # A threshold is reached with >=: 0.5 counts at P@0.5 and 0.8 at P@0.8.
    assert table["P@0.5"] == pytest.approx(4 / 5)
    assert table["P@0.6"] == pytest.approx(3 / 5)
    assert table["P@0.7"] == pytest.approx(2 / 5)
    assert table["P@0.8"] == pytest.approx(2 / 5)
    assert table["P@0.9"] == pytest.approx(1 / 5)
    assert set(summarize([1.0], [1.0], thresholds=(0.25,))) == {"J", "F", "J&F", "P@0.25"}
    with pytest.raises(ValueError, match="one J and one F"):
        summarize([0.5, 0.6], [0.5])
    with pytest.raises(ValueError, match="one J and one F"):
        summarize([], [])


def test_summarize_groups_scores_each_annotator_and_their_mean():
    """Ref-DAVIS17's protocol: each annotator's expressions scored alone, then the mean of the two tables."""
    groups = [2, 1, 1, 2, 1]
    per_j = [0.9, 0.4, 0.6, 0.3, 0.8]
    per_f = [1.0, 0.5, 0.7, 0.5, 0.6]
    tables, mean = summarize_groups(groups, per_j, per_f)
    assert list(tables) == [1, 2]
    assert tables[1] == pytest.approx(summarize([0.4, 0.6, 0.8], [0.5, 0.7, 0.6]))
    assert tables[2]["J"] == pytest.approx(0.6) and tables[2]["P@0.5"] == pytest.approx(0.5)
    assert mean["J"] == pytest.approx((0.6 + 0.6) / 2)
    assert mean["J&F"] == pytest.approx((tables[1]["J&F"] + tables[2]["J&F"]) / 2)
    assert mean["P@0.5"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # not the pooled 3/5
    assert set(mean) == set(tables[1])
    with pytest.raises(ValueError, match="one group, J and F per expression"):
        summarize_groups([1], [0.5, 0.6], [0.5, 0.6])


def test_overall_iou_is_cumulative():
    # Expression A (1 frame): 2 shared pixels, union 6. Expression B (2 frames of another size): a perfect
    # frame of 3 pixels and an empty frame. Cumulative: 5 / 9, unlike the mean of per-expression J (2/3).
    gt_a = np.zeros((1, 4, 4), dtype=bool)
    gt_a[0, 0, :] = True
    pred_a = np.zeros_like(gt_a)
    pred_a[0, 0, :2] = True
    pred_a[0, 1, :2] = True
    gt_b = np.zeros((2, 3, 5), dtype=np.uint8)
    gt_b[0, 1, 1:4] = 1
    pred_b = gt_b.copy()
    assert overall_iou([gt_a, gt_b], [pred_a, pred_b]) == pytest.approx(5 / 9)
    assert evaluate_expression(gt_a, pred_a)["J"] == pytest.approx(2 / 6)
    assert evaluate_expression(gt_b, pred_b)["J"] == 1.0
    assert overall_iou([np.zeros((2, 3, 3))], [np.zeros((2, 3, 3))]) == 1.0
    with pytest.raises(ValueError, match="paired"):
        overall_iou([gt_a, gt_b], [pred_a])
    # The same from per-expression counts, as the evaluate stage gets them from its actors.
    assert (iou_counts(gt_a, pred_a), iou_counts(gt_b, pred_b)) == ((2, 6), (3, 3))
    assert cumulative_iou([2, 3], [6, 3]) == pytest.approx(5 / 9) and cumulative_iou([0], [0]) == 1.0


# ---------------------------------------------------------------- agreement with the reference


@pytest.mark.parametrize(
    ("shape", "bound_th", "seed"),
    [
        ((31, 47), 0.008, 0),
        ((64, 48), 0.008, 1),
        ((57, 91), 0.02, 2),
        ((77, 45), 0.05, 3),
        ((96, 120), 0.008, 4),
        ((45, 63), 3, 5),
        ((1, 17), 0.008, 6),
        ((19, 1), 2, 7),
    ],
)
def test_agrees_with_reference_on_random_masks(shape, bound_th, seed):
    rng = np.random.default_rng(seed)
    gts, preds, voids = [], [], []
    for _ in range(3):
        gt = smooth_blob(rng, shape)
        # A nearby prediction: the blob shifted by up to 3 pixels, with part of another blob added.
        shifted = np.roll(gt, tuple(rng.integers(-3, 4, size=2)), axis=(0, 1))
        gts.append(gt)
        preds.append(shifted | (smooth_blob(rng, shape) & (rng.random(shape) < 0.5)))
        voids.append(rng.random(shape) < 0.03)
    # Noisy masks (many tiny boundaries) and the empty cases.
    gts.append(smooth_blob(rng, shape) ^ (rng.random(shape) < 0.08))
    preds.append(gts[-1] ^ (rng.random(shape) < 0.08))
    voids.append(np.zeros(shape, dtype=bool))
    gts.append(np.zeros(shape, dtype=bool))
    preds.append(rng.random(shape) < 0.1)
    voids.append(np.zeros(shape, dtype=bool))

    gt_stack, pred_stack, void_stack = np.stack(gts), np.stack(preds), np.stack(voids)
    j = db_eval_iou(gt_stack, pred_stack, void_stack)
    f = db_eval_boundary(gt_stack, pred_stack, void_stack, bound_th=bound_th)
    f_no_void = db_eval_boundary(gt_stack, pred_stack, bound_th=bound_th)
    for t in range(len(gts)):
        np.testing.assert_array_equal(seg2bmap(pred_stack[t]), ref_seg2bmap(pred_stack[t]))
        assert j[t] == pytest.approx(ref_iou(gts[t], preds[t], voids[t]), abs=1e-6)
        assert f[t] == pytest.approx(ref_f_measure(gts[t], preds[t], voids[t], bound_th), abs=1e-6)
        assert f_no_void[t] == pytest.approx(ref_f_measure(gts[t], preds[t], None, bound_th), abs=1e-6)


def test_reference_comparison_covers_partial_scores():
    # Guard against a vacuous agreement test: the random pairs must give F values strictly between 0 and 1.
    rng = np.random.default_rng(11)
    shape = (64, 80)
    scores = []
    for _ in range(6):
        gt = smooth_blob(rng, shape)
        pred = np.roll(gt, tuple(rng.integers(-3, 4, size=2)), axis=(0, 1)) | smooth_blob(rng, shape)
        scores.append(db_eval_boundary(gt, pred))
        assert scores[-1] == pytest.approx(ref_f_measure(gt, pred, None, 0.008), abs=1e-6)
    assert sum(0.05 < s < 0.95 for s in scores) >= 3
