"""Where an expression's object has a mask on disk, and reading those masks at a chosen resolution.

Two kinds, kept apart on purpose. Ground truth (`Expression.gt_frames`, in the split's `Annotations/`) is what
training and the teacher may use. Dense masks also cover frames training never sees, and only score
pseudo-labels or give the full-supervision upper bound: the split's `full_annotations/` where it has one for the
video (the synthetic set, its unlabelled split too), else `Annotations/` on the GT frames and on the frames the
label regime hid (`Expression.hidden_frames`: a dense dataset such as Ref-DAVIS17 under `data.train_labels`).
Paths come from `Video.paths`: an unlabelled video may live in another split folder or dataset root than the
expression's split names.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from prvos_core.data.frames import read_object_mask, resize_map
from prvos_core.data.manifest import Expression, Video
from prvos_core.data.review_layer import MASK_VALUE

ANNOTATIONS = "Annotations"
FULL_ANNOTATIONS = "full_annotations"


def mask_path(video: Video, folder: str, frame: str) -> Path:
    """The palette PNG of one frame in `folder` (ANNOTATIONS or FULL_ANNOTATIONS) of the video's split folder."""
    return video.paths.split_dir / folder / video.video_id / f"{frame}.png"


def dense_frames(expression: Expression, video: Video) -> tuple[tuple[str, ...], str]:
    """(frames, folder): every frame on which the expression's object has a mask, and the folder holding them.

    Every frame of the video from FULL_ANNOTATIONS when the video's split has it for this video; else its GT
    and hidden frames, in video order, from ANNOTATIONS. An expression naming no object (Ref-YouTube-VOS valid)
    has only its GT frames.
    """
    if not expression.object_id:
        return expression.gt_frames, ANNOTATIONS
    if (video.paths.full_annotations / video.video_id).is_dir():
        return video.frame_ids, FULL_ANNOTATIONS
    masked = set(expression.gt_frames) | set(expression.hidden_frames)
    return tuple(frame for frame in video.frame_ids if frame in masked), ANNOTATIONS


def frame_mask(expression: Expression, video: Video, frame: str) -> np.ndarray | None:
    """The expression's object on one frame at the frame's own size, for people to look at: its GT mask, else its
    dense mask (`dense_frames`), else None (no mask of that frame exists)."""
    if frame in expression.reviewed_frames:
        return ground_truth_mask(expression, video, frame)
    if not expression.object_id:
        return None
    if frame in expression.gt_frames:
        folder = ANNOTATIONS
    else:
        frames, folder = dense_frames(expression, video)
        if frame not in frames:
            return None
    return read_object_mask(str(mask_path(video, folder, frame)), expression.object_id)


def ground_truth_mask(expression: Expression, video: Video, frame: str, folder: str = ANNOTATIONS) -> np.ndarray:
    """The (H, W) 0/1 mask of the expression's object on one of its ground-truth frames: a person's correction
    (a review layer) where there is one, else the dataset's mask in `folder`."""
    if frame in expression.reviewed_frames:
        return read_object_mask(expression.reviewed_masks[expression.reviewed_frames.index(frame)], str(MASK_VALUE))
    return read_object_mask(str(mask_path(video, folder, frame)), expression.object_id)


def ground_truth_masks(expression: Expression, video: Video, size: tuple[int, int]) -> dict[int, np.ndarray]:
    """Frame index (in `video.frame_ids`) -> (h, w) 0/1 mask of each GT frame: never a hidden one."""
    return _object_masks(expression, video, expression.gt_frames, ANNOTATIONS, size)


def scoring_masks(
    expression: Expression, video: Video, indices: Iterable[int], size: tuple[int, int]
) -> dict[int, np.ndarray]:
    """Frame index -> (h, w) 0/1 dense mask (`dense_frames`) of those of `indices` that have one; the others
    (a real dataset's frames between its sparse annotations) are left out: nothing can score them."""
    frames, folder = dense_frames(expression, video)
    masked = set(frames)
    chosen = [video.frame_ids[t] for t in indices if video.frame_ids[t] in masked]
    return _object_masks(expression, video, chosen, folder, size)


def _object_masks(
    expression: Expression, video: Video, frames: Iterable[str], folder: str, size: tuple[int, int]
) -> dict[int, np.ndarray]:
    """Frame index -> the expression's object on that frame, resized (nearest) to `size` (height, width)."""
    position = {frame: t for t, frame in enumerate(video.frame_ids)}
    return {position[frame]: resize_map(ground_truth_mask(expression, video, frame, folder), size) for frame in frames}
