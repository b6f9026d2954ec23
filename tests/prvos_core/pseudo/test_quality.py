"""Tests of prvos_core.pseudo.quality: pseudo-label precision/recall/IoU against GT and the round summary."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from prvos_core.config import RefineSection
from prvos_core.data.masks import read_mask
from prvos_core.labels import IGNORE_LABEL
from prvos_core.pseudo.quality import QualityCounts, frames_quality, pseudo_label_quality, teacher_quality
from prvos_core.pseudo.refine import RefineSummary, refine_expression
from prvos_core.pseudo.thresholds import ConfidenceHistogram, Thresholds, choose_thresholds
from prvos_core.pseudo.uncertainty import binary_entropy

X = IGNORE_LABEL
THRESHOLDS = Thresholds(0.8, 0.8)


def test_counts_precision_recall_iou_and_coverage_by_hand():
    label = np.array([[1, 1, 0, X], [0, 1, X, 0], [1, 0, 0, X]], dtype=np.uint8)
    gt = np.array([[1, 0, 1, 1], [0, 1, 1, 0], [1, 0, 1, 0]], dtype=np.uint8)
    q = pseudo_label_quality(label, gt)
    # kept pixels: tp at (0,0) (1,1) (2,0); fp at (0,1); fn at (0,2) (2,2); tn at (1,0) (1,3) (2,1); 3 ignored,
    # 2 of them object ((0,3) and (1,2)).
    assert q == QualityCounts(tp=3, fp=1, fn=2, tn=3, ignored=3, ignored_object=2)
    assert (q.kept, q.total) == (9, 12)
    assert q.precision == pytest.approx(3 / 4)
    assert q.recall == pytest.approx(3 / 5)
    assert q.iou == pytest.approx(3 / 6)
    assert q.coverage == pytest.approx(9 / 12)
    assert q.object_coverage == pytest.approx(3 / 7)  # 7 object pixels, 3 of them labelled object


def test_teacher_quality_thresholds_at_one_half_and_keeps_every_pixel():
    prob = np.array([[0.9, 0.5], [0.51, 0.1]], dtype=np.float32)
    gt = np.array([[1, 1], [0, 0]], dtype=np.uint8)
    assert teacher_quality(prob, gt) == QualityCounts(tp=1, fp=1, fn=1, tn=1, ignored=0)


def test_undefined_ratios_are_none_and_counts_add():
    empty = QualityCounts()
    assert (empty.precision, empty.recall, empty.iou, empty.coverage, empty.object_coverage) == (None,) * 5
    all_background = pseudo_label_quality(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8))
    assert all_background.precision is None and all_background.iou is None and all_background.coverage == 1.0
    assert QualityCounts(1, 2, 3, 4, 5, 6) + QualityCounts(10, 20, 30, 40, 50, 60) == QualityCounts(
        11, 22, 33, 44, 55, 66
    )
    with pytest.raises(ValueError, match="shape"):
        pseudo_label_quality(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))


def test_frames_quality_sums_the_masked_frames_only():
    label = np.array([[[1, X]], [[0, 1]], [[1, 1]]], dtype=np.uint8)
    prob = np.array([[[0.9, 0.6]], [[0.2, 0.8]], [[0.9, 0.9]]], dtype=np.float32)
    masks = {0: np.array([[1, 0]], np.uint8), 1: np.array([[1, 1]], np.uint8)}  # frame 2 has no mask
    pseudo, teacher = frames_quality(label, prob, masks)
    assert pseudo == QualityCounts(tp=2, fp=0, fn=1, tn=0, ignored=1, ignored_object=0)
    assert teacher == QualityCounts(tp=2, fp=1, fn=1, tn=0, ignored=0)
    assert frames_quality(label, prob, {}) == (QualityCounts(), QualityCounts())


def _expression(frame_entropy, fg_prob, gt=None):
    """Frames of 2 x 2 pixels: the left column has probability fg_prob[t], the right column 0.0."""
    prob = np.zeros((len(frame_entropy), 2, 2), dtype=np.float32)
    prob[:, :, 0] = np.asarray(fg_prob, dtype=np.float32)[:, None]
    uncertainty = np.broadcast_to(np.asarray(frame_entropy, np.float32)[:, None, None], prob.shape).copy()
    return refine_expression(prob, uncertainty, THRESHOLDS, RefineSection(frames_per_expression=2), gt=gt)


def test_summary_counts_frames_kept_pixels_and_quality_by_hand():
    gt = np.array([[1, 0], [0, 0]], dtype=np.uint8)
    # Expression A: frame 0 GT (teacher 0.9 left column -> kept fg, one fp), frames 1-3 pseudo: entropy ranks 3, 1
    # kept (frame 3's left column 0.7 is ignored), frame 2 rejected.
    a = _expression([0.0, 0.2, 0.3, 0.1], [0.9, 0.95, 0.99, 0.7], gt={0: gt})
    # Expression B: no GT, two frames, both kept and fully confident (the same object on both: the area and
    # temporal rules of expressions without GT pass them).
    b = _expression([0.1, 0.2], [1.0, 1.0])
    summary = RefineSummary(THRESHOLDS)
    summary.add(a)
    summary.add(b)
    assert summary.to_dict() == {
        "threshold_fg": 0.8,
        "threshold_bg": 0.8,
        "expressions": 2,
        "frames": 6,
        "frames_ground_truth": 1,
        "frames_pseudo_labelled": 4,
        "frames_rejected": 1,
        "kept_ratio": 14 / 16,  # A's frame 3 ignores 2 of its 4 pixels
        "pseudo_precision": 0.5,  # GT frame 0: left column labelled fg, GT has fg only at the top
        "pseudo_recall": 1.0,
        "pseudo_iou": 0.5,
        "pseudo_coverage": 1.0,
        "pseudo_object_coverage": 1.0,  # nothing ignored on the GT frame: the object's one pixel is labelled
        "teacher_precision": 0.5,
        "teacher_recall": 1.0,
        "teacher_iou": 0.5,
    }


def test_summary_merge_equals_adding_everything_to_one_summary():
    gt = np.array([[1, 1], [0, 0]], dtype=np.uint8)
    expressions = [
        _expression([0.3, 0.1, 0.2], [0.6, 0.9, 0.3], gt={0: gt}),
        _expression([0.1, 0.1], [0.99, 0.85], gt={1: gt}),
        _expression([0.5, 0.4, 0.3], [0.1, 0.2, 0.95]),
    ]
    one = RefineSummary(THRESHOLDS)
    for refined in expressions:
        one.add(refined)
    first, second = RefineSummary(THRESHOLDS), RefineSummary(THRESHOLDS)
    first.add(expressions[0])
    second.add(expressions[1])
    second.add(expressions[2])
    first.merge(second)
    assert first.to_dict() == one.to_dict()
    assert first.pseudo_quality == one.pseudo_quality and first.teacher_quality == one.teacher_quality


def test_summary_refuses_expressions_refined_with_other_thresholds():
    summary = RefineSummary(Thresholds(0.9, 0.9))
    with pytest.raises(ValueError, match="thresholds|Thresholds"):
        summary.add(_expression([0.1], [0.9]))
    with pytest.raises(ValueError, match="merge"):
        summary.merge(RefineSummary(THRESHOLDS))


def test_refinement_raises_pseudo_label_precision_on_real_masks(shared_data):
    """A simulated teacher on real DAVIS masks, wrong mostly near the object boundary where it is unsure:
    refinement ignores those pixels, so the kept labels are more precise than the raw teacher's."""
    folder = shared_data / "ref_davis16_mini" / "train" / "Annotations" / "blackswan"
    masks = np.stack([read_mask(path) for path in sorted(folder.glob("*.png"))[:4]])
    masks = np.stack([cv2.resize(m, (214, 120), interpolation=cv2.INTER_NEAREST) for m in masks])
    assert set(np.unique(masks)) == {0, 1}
    rng = np.random.default_rng(0)
    signed = np.stack(
        [cv2.distanceTransform(m, cv2.DIST_L2, 3) - cv2.distanceTransform(1 - m, cv2.DIST_L2, 3) for m in masks]
    )
    prob = (1 / (1 + np.exp(-(signed / 2.0 + rng.normal(0.0, 1.5, size=signed.shape))))).astype(np.float32)

    histogram = ConfidenceHistogram()
    histogram.add(prob)
    cfg = RefineSection(percentile=20, min_confidence=0.7, max_confidence=0.95, frames_per_expression=None)
    thresholds = choose_thresholds(histogram, cfg)
    refined = refine_expression(prob, binary_entropy(prob), thresholds, cfg)
    refined_quality = pseudo_label_quality(refined.label, masks)
    raw_quality = teacher_quality(prob, masks)

    assert raw_quality.precision < 0.95  # the simulated teacher does make mistakes
    assert refined_quality.precision > raw_quality.precision + 0.02
    assert refined_quality.iou > raw_quality.iou
    assert 0.6 < refined_quality.coverage < 0.95


def test_spread_frame_choice_keeps_the_most_certain_frame_of_each_span_not_the_neighbours_of_the_ground_truth():
    # 12 frames, ground truth on frame 0; certainty falls with the distance to it (as a propagating teacher's).
    entropy = np.linspace(0.05, 0.6, 12)
    prob = np.zeros((12, 2, 2), np.float32)
    prob[:, :, 0] = 0.9
    uncertainty = np.broadcast_to(entropy[:, None, None], prob.shape).astype(np.float32).copy()
    gt = {0: np.array([[1, 0], [1, 0]], np.uint8)}
    rules = dict(frames_per_expression=3, min_area_ratio=0.0, max_area_ratio=None, min_temporal_iou=0.0)
    certain = refine_expression(prob, uncertainty, THRESHOLDS, RefineSection(**rules), gt=gt)
    assert certain.pseudo_frames == (1, 2, 3)
    spread = refine_expression(prob, uncertainty, THRESHOLDS, RefineSection(**rules, frame_choice="spread"), gt=gt)
    assert spread.pseudo_frames == (1, 4, 8)  # spans 0-3, 4-7, 8-11
    reasons = {d.frame_index: d.reason for d in spread.frames}
    assert "span 2/3" in reasons[4] and "a more certain frame of span 1/3 already kept" in reasons[2]
    # With K at least the candidates, both keep every frame.
    everything = dict(rules, frames_per_expression=11)
    assert refine_expression(prob, uncertainty, THRESHOLDS, RefineSection(**everything, frame_choice="spread"),
                             gt=gt).pseudo_frames == tuple(range(1, 12))  # fmt: skip
