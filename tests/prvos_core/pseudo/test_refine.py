"""Tests of prvos_core.pseudo.refine on hand-made probability maps: ignored pixels, weights, frame choice, thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from prvos_core.config import RefineSection
from prvos_core.labels import IGNORE_LABEL
from prvos_core.pseudo.refine import refine_expression, temporal_iou
from prvos_core.pseudo.thresholds import ConfidenceHistogram, Thresholds, choose_thresholds

X = IGNORE_LABEL

# One frame, 2 x 4: confidences in the predicted class are 0.95 0.80 0.60 0.50 / 0.60 0.75 0.90 1.00.
PROB = np.array([[[0.95, 0.8, 0.6, 0.5], [0.4, 0.25, 0.1, 0.0]]], dtype=np.float32)
THRESHOLDS = Thresholds(fg=0.85, bg=0.7)


def _refine(prob, cfg, uncertainty=None, gt=None, thresholds=THRESHOLDS):
    uncertainty = np.zeros_like(prob) if uncertainty is None else uncertainty
    return refine_expression(prob, uncertainty, thresholds, cfg, gt=gt)


def _entropy_video(frame_entropy, shape=(2, 2)):
    """Confident foreground-everywhere frames (p = 0.99) whose uncertainty map is a given constant per frame."""
    frame_entropy = np.asarray(frame_entropy, dtype=np.float32)
    prob = np.full((len(frame_entropy), *shape), 0.99, dtype=np.float32)
    return prob, np.broadcast_to(frame_entropy[:, None, None], prob.shape).copy()


def test_pixels_below_their_class_threshold_are_ignored():
    refined = _refine(PROB, RefineSection(frames_per_expression=None))
    # fg (p > 0.5) kept when p >= 0.85; bg kept when 1 - p >= 0.7; p = 0.5 is background with confidence 0.5.
    np.testing.assert_array_equal(refined.label, [[[1, X, X, X], [X, 0, 0, 0]]])
    assert refined.label.dtype == np.uint8


def test_confidence_weights_rise_from_min_weight_at_the_threshold_to_one():
    refined = _refine(PROB, RefineSection(frames_per_expression=None, min_weight=0.25))
    # 0.25 + 0.75 * (conf - thr) / (1 - thr): 0.95 vs 0.85 -> 0.75; 0.75 vs 0.7 -> 0.375; 0.9 -> 0.75; 1.0 -> 1.
    expected = [[[0.75, 0, 0, 0], [0, 0.375, 0.75, 1.0]]]
    np.testing.assert_allclose(refined.weight, expected, atol=1e-5)
    assert refined.weight.dtype == np.float32


def test_a_pixel_exactly_at_its_threshold_is_kept_with_min_weight():
    prob = np.array([[[0.75, 0.25]]], dtype=np.float32)
    refined = _refine(
        prob, RefineSection(frames_per_expression=None, min_weight=0.4), thresholds=Thresholds(0.75, 0.75)
    )
    np.testing.assert_array_equal(refined.label, [[[1, 0]]])
    np.testing.assert_allclose(refined.weight, [[[0.4, 0.4]]], atol=1e-6)


def test_uniform_weighting_gives_kept_pixels_weight_one():
    refined = _refine(PROB, RefineSection(frames_per_expression=None, weighting="uniform"))
    np.testing.assert_array_equal(refined.weight, [[[1, 0, 0, 0], [0, 1, 1, 1]]])
    np.testing.assert_array_equal(refined.label, [[[1, X, X, X], [X, 0, 0, 0]]])


def test_disabled_refinement_keeps_every_pixel_and_frame_with_weight_one():
    prob, uncertainty = _entropy_video([0.4, 0.1, 0.3, 0.2, 0.5])
    prob[0] = 0.45
    cfg = RefineSection(enabled=False)
    assert choose_thresholds(ConfidenceHistogram(), cfg) == Thresholds(0.5, 0.5)
    refined = refine_expression(prob, uncertainty, Thresholds(0.5, 0.5), cfg)
    np.testing.assert_array_equal(refined.label, (prob > 0.5).astype(np.uint8))
    np.testing.assert_array_equal(refined.weight, np.ones_like(prob))
    assert refined.pseudo_frames == (0, 1, 2, 3, 4)  # frames_per_expression=3 does not apply
    assert refined.frames[1].reason == "rank 1 of 5 by mean entropy 0.100; refinement disabled, every frame kept"


def test_frames_ranked_by_mean_entropy_ties_by_index_and_top_k_kept():
    prob, uncertainty = _entropy_video([0.3, 0.1, 0.7, 0.1, 0.5, 0.05])
    refined = _refine(prob, RefineSection(frames_per_expression=3), uncertainty)
    assert refined.pseudo_frames == (1, 3, 5)
    reasons = {d.frame_index: (d.kept, d.reason) for d in refined.frames}
    assert reasons == {
        5: (True, "rank 1 of 6 by mean entropy 0.050"),
        1: (True, "rank 2 of 6 by mean entropy 0.100"),
        3: (True, "rank 3 of 6 by mean entropy 0.100"),
        0: (False, "rank 4 of 6 by mean entropy 0.300; top 3 already kept"),
        4: (False, "rank 5 of 6 by mean entropy 0.500; top 3 already kept"),
        2: (False, "rank 6 of 6 by mean entropy 0.700; top 3 already kept"),
    }
    assert [d.frame_index for d in refined.frames] == [0, 1, 2, 3, 4, 5]
    # Rejected frames are all-ignore with weight 0; kept ones keep their labels.
    np.testing.assert_array_equal(refined.label[[0, 2, 4]], np.full((3, 2, 2), X))
    np.testing.assert_array_equal(refined.weight[[0, 2, 4]], np.zeros((3, 2, 2)))
    np.testing.assert_array_equal(refined.label[[1, 3, 5]], np.ones((3, 2, 2)))


def test_equal_entropies_keep_the_lowest_frame_indices():
    prob, uncertainty = _entropy_video([0.2] * 7)
    assert _refine(prob, RefineSection(frames_per_expression=3), uncertainty).pseudo_frames == (0, 1, 2)


@pytest.mark.parametrize("k", [None, 0, -1])
def test_no_frame_limit_keeps_all_frames(k):
    prob, uncertainty = _entropy_video([0.3, 0.1, 0.2, 0.4])
    assert _refine(prob, RefineSection(frames_per_expression=k), uncertainty).pseudo_frames == (0, 1, 2, 3)


def test_frames_with_too_few_kept_pixels_are_rejected_and_the_next_frame_takes_their_place():
    prob, uncertainty = _entropy_video([0.1, 0.2, 0.3, 0.4])
    prob[0, 0] = 0.6  # 2 of frame 0's 4 pixels fall below the 0.85 foreground threshold
    refined = _refine(prob, RefineSection(frames_per_expression=2, min_kept_ratio=0.75), uncertainty)
    assert refined.pseudo_frames == (1, 2)
    frame0 = refined.frames[0]
    assert not frame0.kept and frame0.kept_ratio == 0.5
    assert frame0.reason == "rank 1 of 4 by mean entropy 0.100; kept-pixel ratio 0.50 below min 0.75"
    assert refined.frames[3].reason == "rank 4 of 4 by mean entropy 0.400; top 2 already kept"


def test_ground_truth_frames_keep_their_annotation_and_are_not_ranked():
    prob, uncertainty = _entropy_video([0.9, 0.3, 0.2, 0.1], shape=(2, 3))
    gt_mask = np.array([[0, 1, 1], [0, 0, 1]], dtype=np.uint8)
    refined = _refine(prob, RefineSection(frames_per_expression=1), uncertainty, gt={0: gt_mask, 3: gt_mask})
    for t in (0, 3):
        np.testing.assert_array_equal(refined.label[t], gt_mask)
        np.testing.assert_array_equal(refined.weight[t], np.ones((2, 3)))
        decision = refined.frames[t]
        assert (decision.source, decision.kept, decision.reason, decision.kept_ratio) == (
            "ground_truth",
            True,
            "ground_truth",
            1.0,
        )
    # Frame 3 is the least uncertain, but it has GT: the pseudo-label choice ranks frames 1 and 2 only.
    assert refined.pseudo_frames == (2,)
    assert refined.frames[2].reason == "rank 1 of 2 by mean entropy 0.200"
    # The teacher said foreground everywhere (p = 0.99, all kept): on 2 GT frames, 3 tp and 3 fp each.
    assert (refined.pseudo_quality.tp, refined.pseudo_quality.fp, refined.pseudo_quality.ignored) == (6, 6, 0)
    assert refined.teacher_quality == refined.pseudo_quality


def test_ground_truth_frame_quality_counts_only_kept_pixels():
    prob = np.array([[[0.95, 0.6], [0.05, 0.45]]], dtype=np.float32)  # kept: 0.95 (fg) and 0.05 (bg)
    gt_mask = np.array([[1, 0], [1, 0]], dtype=np.uint8)
    refined = _refine(prob, RefineSection(), gt={0: gt_mask})
    q = refined.pseudo_quality
    assert (q.tp, q.fp, q.fn, q.tn, q.ignored) == (1, 0, 1, 0, 2)
    t = refined.teacher_quality  # p > 0.5 on every pixel: fg at 0.95, 0.6
    assert (t.tp, t.fp, t.fn, t.tn, t.ignored) == (1, 1, 1, 1, 0)


def test_bad_ground_truth_is_rejected():
    prob, uncertainty = _entropy_video([0.1, 0.2])
    with pytest.raises(ValueError, match="frame 5"):
        _refine(prob, RefineSection(), uncertainty, gt={5: np.zeros((2, 2), np.uint8)})
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        _refine(prob, RefineSection(), uncertainty, gt={0: np.zeros((3, 3), np.uint8)})
    with pytest.raises(ValueError, match="binary"):
        _refine(prob, RefineSection(), uncertainty, gt={0: np.full((2, 2), 2, np.uint8)})


def test_non_finite_uncertainty_is_an_error_not_a_silent_ranking():
    prob, uncertainty = _entropy_video([0.1, 0.2, 0.3])
    uncertainty[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"frames \[1\]"):
        _refine(prob, RefineSection(), uncertainty)


def test_histogram_percentile_matches_numpy_on_uniform_confidences():
    rng = np.random.default_rng(0)
    prob = rng.uniform(0.0, 1.0, size=(50, 40, 50)).astype(np.float32)
    histogram = ConfidenceHistogram(bins=200)
    histogram.add(prob)
    conf = np.maximum(prob, 1 - prob)
    fg = prob > 0.5
    for q in (0, 5, 20, 50, 80, 99):
        assert abs(histogram.percentile(True, q) - np.percentile(conf[fg], q)) <= histogram.bin_width
        assert abs(histogram.percentile(False, q) - np.percentile(conf[~fg], q)) <= histogram.bin_width
    assert histogram.foreground.sum() == fg.sum() and histogram.background.sum() == (~fg).sum()


def test_histogram_merge_equals_histogram_of_concatenation():
    rng = np.random.default_rng(1)
    first = rng.beta(0.5, 0.5, size=(3, 16, 16)).astype(np.float32)
    second = rng.beta(2.0, 5.0, size=(5, 16, 16)).astype(np.float32)
    second[0, 0, :3] = [0.0, 1.0, 0.5]  # the edges land in the first and last bins
    merged = ConfidenceHistogram(bins=100)
    merged.add(first)
    part = ConfidenceHistogram(bins=100)
    part.add(second)
    merged.merge(part)
    whole = ConfidenceHistogram(bins=100)
    whole.add(np.concatenate([first, second]))
    np.testing.assert_array_equal(merged.foreground, whole.foreground)
    np.testing.assert_array_equal(merged.background, whole.background)
    assert merged.foreground.sum() + merged.background.sum() == first.size + second.size
    with pytest.raises(ValueError, match="bins"):
        merged.merge(ConfidenceHistogram(bins=10))


def test_thresholds_are_per_class_percentiles_clamped_to_the_configured_range():
    histogram = ConfidenceHistogram(bins=1000)
    histogram.add(np.linspace(0.8, 1.0, 10_001)[1:])  # fg confidence uniform on (0.8, 1]: 20th pct = 0.84
    histogram.add(1 - np.linspace(0.6, 1.0, 10_001)[1:])  # bg confidence uniform on (0.6, 1]: 20th pct = 0.68
    width = histogram.bin_width
    free = choose_thresholds(histogram, RefineSection(percentile=20, min_confidence=0.5, max_confidence=0.99))
    assert free.fg == pytest.approx(0.84, abs=width) and free.bg == pytest.approx(0.68, abs=width)
    clamped = choose_thresholds(histogram, RefineSection(percentile=20, min_confidence=0.7, max_confidence=0.82))
    assert clamped == Thresholds(fg=0.82, bg=0.7)


def test_a_class_absent_from_the_round_gets_min_confidence():
    histogram = ConfidenceHistogram()
    histogram.add(np.full((4, 4), 0.1))
    assert histogram.percentile(True, 20) is None
    thresholds = choose_thresholds(histogram, RefineSection(min_confidence=0.75, max_confidence=0.95))
    assert thresholds.fg == 0.75
    assert thresholds.bg == pytest.approx(0.9, abs=histogram.bin_width)


def test_class_balanced_thresholds_keep_the_same_share_of_a_rare_uncertain_foreground():
    # 10% foreground with confidence uniform on [0.6, 0.9], 90% background uniform on [0.9, 1.0]: one shared cut
    # at the 20th percentile of all pixels would drop all foreground; per-class cuts keep 80% of each.
    rng = np.random.default_rng(2)
    fg_prob = rng.uniform(0.6, 0.9, size=2_000)
    bg_prob = 1 - rng.uniform(0.9, 1.0, size=18_000)
    prob = np.concatenate([fg_prob, bg_prob]).astype(np.float32).reshape(1, 100, 200)
    histogram = ConfidenceHistogram()
    histogram.add(prob)
    cfg = RefineSection(percentile=20, min_confidence=0.5, max_confidence=0.99, frames_per_expression=None)
    refined = _refine(prob, cfg, thresholds=choose_thresholds(histogram, cfg))
    label = refined.label.reshape(-1)
    assert (label[:2_000] == 1).mean() == pytest.approx(0.8, abs=0.01)
    assert (label[2_000:] == 0).mean() == pytest.approx(0.8, abs=0.01)
    shared_cut = np.percentile(np.maximum(prob, 1 - prob), 20)
    assert (np.maximum(fg_prob, 1 - fg_prob) >= shared_cut).mean() == 0.0


def test_thresholds_must_lie_in_the_confidence_range():
    with pytest.raises(ValueError, match="thresholds"):
        Thresholds(fg=1.0, bg=0.7)
    with pytest.raises(ValueError, match="thresholds"):
        Thresholds(fg=0.8, bg=0.4)


def test_frames_whose_object_area_disagrees_with_the_annotated_frames_are_rejected():
    # 4 frames of 2 x 4; frame 0 has GT covering 2 of 8 pixels (area 0.25).
    prob = np.zeros((4, 2, 4), dtype=np.float32)
    gt_mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=np.uint8)
    prob[1] = 0.0  # the teacher sees no object: confidently background, the lowest entropy
    prob[2, 0, :2] = 0.99  # the object, area 0.25: ratio 1
    prob[3, :, :] = 0.99  # everything foreground: area 1.0, ratio 4
    uncertainty = np.zeros_like(prob)
    uncertainty[2] = 0.1  # frame 2 is the least certain of the three, yet the only plausible one
    refined = _refine(prob, RefineSection(frames_per_expression=3), uncertainty, gt={0: gt_mask})
    assert refined.pseudo_frames == (2,)
    assert refined.frames[1].reason == (
        "rank 1 of 3 by mean entropy 0.000; predicted object area 0.00x the annotated frames' mean, outside [0.5, 2]"
    )
    assert "area 4.00x" in refined.frames[3].reason and not refined.frames[3].kept
    np.testing.assert_array_equal(refined.label[1], np.full((2, 4), X))
    # Disabled bounds keep all three.
    loose = RefineSection(frames_per_expression=3, min_area_ratio=0.0, max_area_ratio=None)
    assert _refine(prob, loose, uncertainty, gt={0: gt_mask}).pseudo_frames == (1, 2, 3)
    # Without GT the reference is the median predicted area (0.125): frames 0 and 1 (0x) and 3 (8x) are out.
    without_gt = _refine(prob, RefineSection(frames_per_expression=4, min_temporal_iou=0.0), uncertainty)
    assert without_gt.pseudo_frames == (2,)
    assert without_gt.frames[3].reason == (
        "rank 3 of 4 by mean entropy 0.000; predicted object area 8.00x the expression's median, outside [0.5, 2]"
    )


def _square_video(corners, side=3, shape=(8, 8)):
    """A confident side x side square object (p = 0.99, background 0.01) with its top-left corner per frame."""
    prob = np.full((len(corners), *shape), 0.01, dtype=np.float32)
    for t, (y, x) in enumerate(corners):
        prob[t, y : y + side, x : x + side] = 0.99
    return prob


def test_without_ground_truth_a_frame_where_the_object_jumps_away_is_rejected():
    # A still object; on frame 3 the teacher jumps to the opposite corner (same area), and is most sure there.
    prob = _square_video([(0, 0)] * 3 + [(5, 5)] + [(0, 0)] * 3)
    uncertainty = np.full_like(prob, 0.2)
    uncertainty[3] = 0.0
    np.testing.assert_allclose(temporal_iou(prob > 0.5), [1, 1, 1, 0, 1, 1, 1])
    refined = _refine(prob, RefineSection(frames_per_expression=None), uncertainty)
    assert refined.pseudo_frames == (0, 1, 2, 4, 5, 6)
    assert refined.frames[3].reason == (
        "rank 1 of 7 by mean entropy 0.000; predicted mask's best IoU 0.00 with the neighbouring frames' below min 0.50"
    )
    np.testing.assert_array_equal(refined.label[3], np.full((8, 8), X))
    np.testing.assert_array_equal(refined.weight[3], np.zeros((8, 8)))
    # Its neighbours still agree with their other neighbour (IoU 1): only the jump is rejected.
    assert refined.frames[2].kept and refined.frames[4].kept
    loose = RefineSection(frames_per_expression=None, min_temporal_iou=0.0)
    assert _refine(prob, loose, uncertainty).pseudo_frames == tuple(range(7))


def test_without_ground_truth_the_area_reference_is_the_median_predicted_area():
    prob = _square_video([(2, 2)] * 5, side=2)
    prob[2, :6, :6] = 0.99  # 36 pixels against the others' 4: 9x the median
    refined = _refine(prob, RefineSection(frames_per_expression=None), np.zeros_like(prob))
    assert refined.pseudo_frames == (0, 1, 3, 4)
    assert refined.frames[2].reason == (
        "rank 3 of 5 by mean entropy 0.000; predicted object area 9.00x the expression's median, outside [0.5, 2]"
    )


def test_an_expression_whose_teacher_sees_nothing_has_every_frame_rejected():
    prob = np.full((5, 8, 8), 0.01, dtype=np.float32)
    prob[1, :2, :2] = 0.99  # an object on 2 of 5 frames: the median area is 0
    prob[4, :2, :2] = 0.99
    refined = _refine(prob, RefineSection(frames_per_expression=None), np.zeros_like(prob))
    assert refined.pseudo_frames == ()
    assert all(
        not d.kept and d.reason.endswith("teacher finds no object (predicted object area 0 on most frames)")
        for d in refined.frames
    )
    np.testing.assert_array_equal(refined.label, np.full(prob.shape, X))
    np.testing.assert_array_equal(refined.weight, np.zeros(prob.shape))
    # With both area bounds off there is no area rule; the temporal rule alone rejects the flickering frames
    # (best IoU with a neighbour: 0, 0, 1, 1, 0; two empty frames agree).
    loose = RefineSection(frames_per_expression=None, min_area_ratio=0.0, max_area_ratio=None)
    assert _refine(prob, loose, np.zeros_like(prob)).pseudo_frames == (2, 3)


def test_temporal_iou_of_empty_and_single_frames():
    empty = np.zeros((3, 2, 2), dtype=bool)
    np.testing.assert_array_equal(temporal_iou(empty), [1.0, 1.0, 1.0])  # agree there is nothing
    one = empty.copy()
    one[2, 0, 0] = True
    np.testing.assert_array_equal(temporal_iou(one), [1.0, 1.0, 0.0])
    assert np.isnan(temporal_iou(one[:1])).all()  # no neighbour: nothing to compare with
    single = _refine(_square_video([(0, 0)]), RefineSection(min_temporal_iou=1.0), np.zeros((1, 8, 8), np.float32))
    assert single.pseudo_frames == (0,)


def test_an_expression_with_ground_truth_is_unaffected_by_min_temporal_iou():
    prob = _square_video([(0, 0)] * 3 + [(5, 5)] + [(0, 0)] * 3)
    uncertainty = np.full_like(prob, 0.2)
    uncertainty[3] = 0.0
    gt = {0: (prob[0] > 0.5).astype(np.uint8)}
    strict = _refine(prob, RefineSection(frames_per_expression=None, min_temporal_iou=1.0), uncertainty, gt=gt)
    loose = _refine(prob, RefineSection(frames_per_expression=None, min_temporal_iou=0.0), uncertainty, gt=gt)
    assert strict.frames == loose.frames
    np.testing.assert_array_equal(strict.label, loose.label)
    np.testing.assert_array_equal(strict.weight, loose.weight)
    assert strict.pseudo_frames == (1, 2, 3, 4, 5, 6)  # the jump keeps the GT frame's area: the GT rules pass it
