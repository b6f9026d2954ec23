"""The review queue's score and choice, and the round-to-round flip share."""

from __future__ import annotations

import numpy as np
import pytest

from prvos_core.data.manifest import Expression
from prvos_core.pseudo.uncertainty import binary_entropy
from prvos_core.review.queue import ReviewItem, candidates, choose, flipped_share, uncertainty_score


def _expression(gt: tuple[str, ...], object_id: str = "1", expression_id: str = "e1") -> Expression:
    frames = ("00000", "00001", "00002", "00003")
    return Expression(expression_id, "0", "train", "v1", object_id, None, "a cat", gt, frames)


def test_the_score_is_the_entropy_over_the_object_its_border_and_the_unsure_pixels():
    prob = np.zeros((40, 40), np.float32)
    prob[10:20, 10:20] = 0.7  # the object, not quite sure
    uncertainty = binary_entropy(prob)
    region = np.zeros_like(prob, bool)  # the object dilated by a 1-pixel band (3 % of 40, a 3x3 cross)
    region[9:21, 9:21] = True
    region[[9, 9, 20, 20], [9, 20, 9, 20]] = False
    expected = uncertainty[region].mean()
    assert uncertainty_score(prob, uncertainty) == pytest.approx(expected, rel=1e-5)
    # The confident background does not dilute it: the score is far above the frame-wide mean.
    assert uncertainty_score(prob, uncertainty) > 5 * uncertainty.mean()
    # Sure there is nothing: 0. Unsure pixels without a predicted object still count.
    assert uncertainty_score(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32)) == 0.0
    hazy = np.full((8, 8), 0.3, np.float32)
    assert uncertainty_score(hazy, binary_entropy(hazy)) == pytest.approx(float(binary_entropy(np.float32(0.3))))


def test_candidates_are_the_frames_without_ground_truth():
    prob = np.random.default_rng(0).uniform(size=(4, 6, 6)).astype(np.float32)
    items = candidates(
        _expression(("00000", "00002")), ("00000", "00001", "00002", "00003"), prob, binary_entropy(prob)
    )
    assert [(i.frame_id, i.frame_index) for i in items] == [("00001", 1), ("00003", 3)]
    assert items[0].target == "1" and items[0].key == "e1/00001"
    nameless = candidates(_expression((), object_id=""), ("00000",), prob[:1], binary_entropy(prob[:1]))
    assert nameless[0].target == "expression-e1"


def _item(expression: str, video: str, target: str, frame: str, score: float) -> ReviewItem:
    return ReviewItem(expression, "train", video, target, frame, int(frame), score)


def test_choose_by_score_one_pair_per_object_frame_and_a_cap_per_video():
    items = [
        _item("e1", "v1", "1", "00001", 0.9),
        _item("e2", "v1", "1", "00001", 0.8),  # the same object and frame through another expression
        _item("e1", "v1", "1", "00002", 0.7),
        _item("e3", "v1", "2", "00002", 0.6),
        _item("e4", "v2", "1", "00001", 0.5),
        _item("e4", "v2", "1", "00003", 0.1),
    ]
    assert [i.key for i in choose(items, 3, "uncertainty")] == ["e1/00001", "e1/00002", "e3/00002"]
    assert [i.key for i in choose(items, 3, "uncertainty", per_video=1)] == ["e1/00001", "e4/00001"]
    # spread: each object's best frame (objects by that score), then each object's second best
    assert [i.key for i in choose(items, 4, "spread")] == ["e1/00001", "e3/00002", "e4/00001", "e1/00002"]
    assert [i.key for i in choose(items, 9, "spread", per_video=2)] == ["e1/00001", "e3/00002", "e4/00001", "e4/00003"]
    drawn = choose(items, 4, "random", seed=1)
    assert len(drawn) == 4 and len({(i.video_id, i.target, i.frame_id) for i in drawn}) == 4
    assert [i.key for i in choose(items, 4, "random", seed=1)] == [i.key for i in drawn]  # seeded
    object_frames = {(i.video_id, i.target, i.frame_id) for i in choose(items, 10, "uncertainty")}
    assert {(i.video_id, i.target, i.frame_id) for i in choose(items, 10, "random", seed=2)} == object_frames


def test_flipped_share_counts_changed_labels_on_pseudo_labelled_frames_only():
    old = np.zeros((3, 4, 4), np.float32)
    new = old.copy()
    new[0] = 1.0  # a ground-truth frame: not counted
    new[1, :2] = 0.9  # half of one pseudo-labelled frame flips
    assert flipped_share(new, old, ("a", "b", "c"), ("a",)) == pytest.approx(8 / 32)
    assert flipped_share(new, old, ("a", "b", "c"), ("a", "b", "c")) is None
    assert flipped_share(new, old[:2], ("a", "b", "c"), ()) is None
