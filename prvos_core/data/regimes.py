"""Label regimes (`data.train_labels`): which ground-truth masks of the train split training may use.

- "provided": every mask the dataset has;
- "first": each expression's first ground-truth frame in video order (the semi-supervised protocol);
- "every:K": the ground-truth frames at positions 0, K, 2K, ... of the video's usable frames.

A mask the regime takes away moves from `Expression.gt_frames` to `Expression.hidden_frames`: training and the
teacher never see it, and it is read only to score pseudo-labels. "every:K" may leave an expression with no
ground truth at all; it is then trained on like an expression of an unlabelled video.
"""

from __future__ import annotations

from dataclasses import replace

from prvos_core.config import parse_label_regime
from prvos_core.data.manifest import Expression, Manifest, Video


def apply_label_regime(manifest: Manifest, train_labels: str, split: str) -> Manifest:
    """The manifest with `train_labels` (a `data.train_labels` string) applied to the expressions of `split`."""
    kind, every = parse_label_regime(train_labels)
    if kind == "provided":
        return manifest
    expressions = tuple(
        _hide(expression, manifest.video_of(expression), kind, every) if expression.split == split else expression
        for expression in manifest.expressions
    )
    return replace(manifest, expressions=expressions)


def kept_frames(expression: Expression, video: Video, kind: str, every: int | None) -> tuple[str, ...]:
    """The ground-truth frames of `expression` that the regime (`parse_label_regime`'s pair) keeps."""
    position = {frame: t for t, frame in enumerate(video.frame_ids)}
    in_order = sorted(expression.gt_frames, key=position.__getitem__)
    if kind == "provided":
        return tuple(in_order)
    if kind == "first":
        return tuple(in_order[:1])
    assert kind == "every" and every is not None, (kind, every)
    return tuple(frame for frame in in_order if position[frame] % every == 0)


def _hide(expression: Expression, video: Video, kind: str, every: int | None) -> Expression:
    kept = kept_frames(expression, video, kind, every)
    hidden = set(expression.gt_frames) - set(kept) | set(expression.hidden_frames)
    return replace(expression, gt_frames=kept, hidden_frames=tuple(sorted(hidden)))
