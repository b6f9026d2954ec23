"""One expression's pseudo-labels as a picture: a strip of frames with what the teacher and refinement made
of each, for people deciding whether a round's labels are worth training on.

Rows: the frame; its ground truth (training mask, or a dense scoring-only mask where the dataset has one);
the teacher's foreground probability; its uncertainty; the refined label (ignored pixels hatched); the loss
weight. Columns: frames, each under a header bar coloured by what refinement decided (ground truth, kept
pseudo-label, rejected) and titled with the frame id and its rank by mean entropy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from prvos_core.pseudo.store import FrameDecision
from prvos_core.viz.pictures import (
    GROUND_TRUTH,
    Column,
    empty_panel,
    fit_frame,
    fit_map,
    label_picture,
    overlay_mask,
    panel_size,
    probability_picture,
    strip,
    uncertainty_picture,
    weight_picture,
)

# Header colours of the three frame decisions (the report's legend repeats them).
DECISION_COLORS = {
    "ground_truth": (50, 110, 220),
    "kept": (40, 150, 70),
    "rejected": (190, 70, 70),
}
ROW_NAMES = ("frame", "ground truth", "teacher p(object)", "uncertainty", "refined label", "loss weight")


def column_title(frame_id: str, decision: FrameDecision) -> str:
    """A column's title: the frame id and 'GT', or its rank by mean entropy ('#2'), with ' x' when rejected."""
    mark = "GT" if decision.source == "ground_truth" else f"#{decision.rank}" + ("" if decision.kept else " x")
    return f"{frame_id} {mark}"


def choose_columns(decisions: Sequence[FrameDecision], max_columns: int) -> list[int]:
    """Indices of the frames to show, in frame order: all when they fit; else every kept pseudo-labelled
    frame, then frames spread evenly over the video (ground truth and rejected alike) up to `max_columns`."""
    if max_columns < 1:
        raise ValueError(f"max_columns must be at least 1, got {max_columns}")
    if len(decisions) <= max_columns:
        return list(range(len(decisions)))
    chosen = [t for t, d in enumerate(decisions) if d.decision == "kept"][:max_columns]
    spread = np.linspace(0, len(decisions) - 1, num=max_columns).round().astype(int).tolist()
    for t in spread:
        if len(chosen) >= max_columns:
            break
        if t not in chosen:
            chosen.append(t)
    # linspace may repeat an index on short ranges; fill from the start then.
    for t in range(len(decisions)):
        if len(chosen) >= max_columns:
            break
        if t not in chosen:
            chosen.append(t)
    return sorted(chosen)


def pseudo_label_strip(
    frames: Sequence[np.ndarray],
    ground_truth: Mapping[int, np.ndarray],
    prob: np.ndarray,
    uncertainty: np.ndarray,
    label: np.ndarray,
    weight: np.ndarray,
    decisions: Sequence[FrameDecision],
    frame_ids: Sequence[str],
    *,
    panel_height: int = 96,
) -> np.ndarray:
    """The strip of the shown frames (one column each).

    frames: C RGB (H, W, 3) uint8 frames at their original size. ground_truth: column -> (H, W) {0, 1} mask
    (absent: 'no mask'). prob, uncertainty, weight: (C, h, w) float in [0, 1] at the store's size; label:
    (C, h, w) uint8 0/1/255. decisions, frame_ids: the C columns' refine decisions and frame ids.
    """
    count = len(frames)
    if not count or any(len(x) != count for x in (prob, uncertainty, label, weight, decisions, frame_ids)):
        raise ValueError("frames, prob, uncertainty, label, weight and decisions must have one entry per column")
    size = panel_size(*frames[0].shape[:2], panel_height)
    shown = [fit_frame(frame, size) for frame in frames]
    truth = [
        overlay_mask(shown[c], fit_map(ground_truth[c], size, nearest=True), GROUND_TRUTH)
        if c in ground_truth
        else empty_panel(size, "no mask")
        for c in range(count)
    ]
    rows = [
        (ROW_NAMES[0], shown),
        (ROW_NAMES[1], truth),
        (ROW_NAMES[2], [probability_picture(fit_map(p, size, nearest=False)) for p in prob]),
        (ROW_NAMES[3], [uncertainty_picture(fit_map(u, size, nearest=False)) for u in uncertainty]),
        (ROW_NAMES[4], [label_picture(fit_map(x, size, nearest=True)) for x in label]),
        (
            ROW_NAMES[5],
            [
                weight_picture(fit_map(w, size, nearest=True), fit_map(x, size, nearest=True))
                for w, x in zip(weight, label, strict=True)
            ],
        ),
    ]
    columns = [
        Column(column_title(f, d), DECISION_COLORS[d.decision]) for f, d in zip(frame_ids, decisions, strict=True)
    ]
    return strip(rows, columns)
