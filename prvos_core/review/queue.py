"""The review queue: which (expression, frame) pairs of a round people should correct first.

Candidates are the frames of train expressions that have no ground truth (the ones the teacher labelled). The
uncertainty score of a frame is the teacher's mean normalised binary entropy over its predicted object and a
border band around it, plus every pixel it is unsure about (entropy >= 0.5, i.e. 0.11 < p < 0.89). A frame-wide
mean would be dominated by confident background; this region is where a correction changes the label. A frame
where the teacher is sure there is nothing scores 0.

A correction is of an object on a frame (the mask serves every expression of that object), so an object's
frame enters the queue once, through its highest-scoring expression; `per_video` caps the pairs of one video,
so that one hard video does not take the whole budget.

Orders: `uncertainty` takes the highest scores first; `spread` takes every object's most uncertain frame first
(objects by that score), then every object's second, and so on; `random` is a seeded shuffle. By score alone
the queue gathers on a few hard objects (benchmarks/results/review.md: 30 of 70 expressions at N = 10 %, where
random review reached 59), and the next student, which must generalise to other videos, gains more from a
correction on an object it has none of than from a fourth one on the same object.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from prvos_core.data.manifest import Expression
from prvos_core.data.review_layer import target_of
from prvos_core.labels import predicted_foreground

ReviewOrder = Literal["uncertainty", "spread", "random"]
UNSURE_ENTROPY = 0.5  # entropy at p = 0.11 or 0.89
BORDER_SHARE = 0.03  # border band around the predicted object, as a share of the frame's shorter side


@dataclass(frozen=True)
class ReviewItem:
    """One (expression, frame) pair offered for review, with the teacher's uncertainty score on it."""

    expression_id: str
    split: str
    video_id: str
    target: str  # what a correction is of (review_layer.target_of)
    frame_id: str
    frame_index: int  # in the video's frame list
    score: float  # mean entropy over the predicted object, its border and the unsure pixels

    @property
    def key(self) -> str:
        """Stable name of the pair in an export (a task's `prvos_key`)."""
        return f"{self.expression_id}/{self.frame_id}"


def uncertainty_score(prob: np.ndarray, uncertainty: np.ndarray) -> float:
    """Mean of `uncertainty` (H, W) over the predicted object of `prob` (H, W), its border band, and every pixel
    with entropy >= UNSURE_ENTROPY; 0.0 where that region is empty."""
    foreground = predicted_foreground(prob).astype(np.uint8)
    band = max(1, round(BORDER_SHARE * min(prob.shape)))
    region = cv2.dilate(foreground, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1)))
    region = (region > 0) | (uncertainty >= UNSURE_ENTROPY)
    return float(uncertainty[region].mean(dtype=np.float64)) if region.any() else 0.0


def candidates(
    expression: Expression, frame_ids: tuple[str, ...], prob: np.ndarray, uncertainty: np.ndarray
) -> list[ReviewItem]:
    """The pairs of one expression that a person could correct: its frames without ground truth, scored.

    frame_ids: the frames of the teacher's arrays prob and uncertainty (T, H, W), in video order.
    """
    gt = set(expression.gt_frames)
    return [
        ReviewItem(
            expression.expression_id,
            expression.split,
            expression.video_id,
            target_of(expression),
            frame,
            t,
            uncertainty_score(prob[t], uncertainty[t]),
        )  # fmt: skip
        for t, frame in enumerate(frame_ids)
        if frame not in gt
    ]


def choose(
    items: Iterable[ReviewItem], count: int, order: ReviewOrder, per_video: int | None = None, seed: int = 0
) -> list[ReviewItem]:
    """Up to `count` pairs in `order` (module docstring; ties by key); one pair per object frame, at most
    `per_video` per video. The result is in the chosen order."""
    pool = sorted(items, key=lambda item: item.key)
    if order in ("uncertainty", "spread"):
        pool.sort(key=lambda item: -item.score)
    else:
        pool = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    if order == "spread":
        pool = _one_per_object_at_a_time(pool)
    chosen, seen, per = [], set(), Counter()
    for item in pool:
        frame_of_object = (item.split, item.video_id, item.target, item.frame_id)
        if frame_of_object in seen or (per_video is not None and per[item.video_id] >= per_video):
            continue
        seen.add(frame_of_object)
        per[item.video_id] += 1
        chosen.append(item)
        if len(chosen) == count:
            break
    return chosen


def _one_per_object_at_a_time(ranked: list[ReviewItem]) -> list[ReviewItem]:
    """`ranked` (best first) reordered in passes: pass k holds each object's k-th best frame, in ranked order."""
    passes: dict[int, list[ReviewItem]] = {}
    taken: Counter = Counter()
    seen = set()
    for item in ranked:
        frame_of_object = (item.split, item.video_id, item.target, item.frame_id)
        if frame_of_object in seen:
            continue  # another expression of the object scored that frame higher
        seen.add(frame_of_object)
        obj = (item.split, item.video_id, item.target)
        passes.setdefault(taken[obj], []).append(item)
        taken[obj] += 1
    return [item for k in sorted(passes) for item in passes[k]]


def flipped_share(
    new: np.ndarray, old: np.ndarray, frame_ids: tuple[str, ...], gt_frames: Iterable[str]
) -> float | None:
    """Share of the pseudo-labelled pixels (frames of `frame_ids` not in `gt_frames`) whose teacher label (p > 0.5)
    differs between two rounds' probabilities `new` and `old` (T, H, W); None when nothing compares."""
    gt = set(gt_frames)
    pseudo = [t for t, frame in enumerate(frame_ids) if frame not in gt]
    if not pseudo or new.shape != old.shape:
        return None
    return float((predicted_foreground(new[pseudo]) != predicted_foreground(old[pseudo])).mean())
