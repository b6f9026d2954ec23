"""A run's rounds side by side, from the stages' commit markers: a table and a plot of the student's J&F
and the pseudo-label precision and coverage each round's teacher produced (for `prvos inspect`)."""

from __future__ import annotations

import math
from pathlib import Path

from pipelines.run_store import RunStore
from prvos_core.config import PrvosConfig

# (column title, stage kind, metric key); every value comes from that stage's marker of the row's round.
COLUMNS = (
    ("student J&F", "evaluate", "JF"),
    ("J", "evaluate", "J"),
    ("F", "evaluate", "F"),
    ("P@0.5", "evaluate", "P0.5"),
    ("train loss", "train", "loss"),
    ("teacher precision", "refine", "teacher_precision"),
    ("pseudo precision", "refine", "pseudo_precision"),
    ("pseudo recall", "refine", "pseudo_recall"),
    ("pseudo coverage", "refine", "pseudo_coverage"),
    ("pseudo precision (full)", "refine", "pseudo_precision_full"),
    ("pseudo coverage (full)", "refine", "pseudo_coverage_full"),
    ("threshold fg", "refine", "threshold_fg"),
    ("threshold bg", "refine", "threshold_bg"),
    ("frames kept", "refine", "frames_pseudo_labelled"),
    ("frames rejected", "refine", "frames_rejected"),
)
# Plotted lines: (label, stage kind, metric key, line style).
LINES = (
    ("student J&F (valid)", "evaluate", "JF", "-"),
    ("pseudo precision (GT frames)", "refine", "pseudo_precision", "-"),
    ("pseudo coverage (GT frames)", "refine", "pseudo_coverage", "-"),
    ("pseudo precision (full masks)", "refine", "pseudo_precision_full", "--"),
    ("pseudo coverage (full masks)", "refine", "pseudo_coverage_full", "--"),
)


def _metrics(store: RunStore, config: PrvosConfig) -> dict[tuple[int, str], dict[str, float]]:
    """(round, stage kind) -> the committed stage's metrics, for every round's train, refine and evaluate."""
    found = {}
    for round_index in range(config.rounds + 1):
        for kind in ("train", "refine", "evaluate"):
            marker = store.read_marker(f"r{round_index}-{kind}")
            if marker is not None:
                found[(round_index, kind)] = marker.metrics
    return found


def round_rows(store: RunStore, config: PrvosConfig) -> tuple[list[str], list[list]]:
    """The table's header and one row per round (None where the stage has not committed or has no value)."""
    metrics = _metrics(store, config)
    rows = [
        [round_index, *(metrics.get((round_index, kind), {}).get(key) for _, kind, key in COLUMNS)]
        for round_index in range(config.rounds + 1)
    ]
    for row in rows:
        for index in (-2, -1):  # frame counts read better as integers
            row[index] = None if row[index] is None else int(row[index])
    return ["round", *(title for title, _, _ in COLUMNS)], rows


def plot_rounds(store: RunStore, config: PrvosConfig, path: Path) -> None:
    """Write the plot as a PNG; lines with no value in any round are left out, the axis stays [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = _metrics(store, config)
    rounds = list(range(config.rounds + 1))
    figure, axis = plt.subplots(figsize=(7.5, 3.6), dpi=100)
    try:
        for label, kind, key, style in LINES:
            values = [metrics.get((r, kind), {}).get(key, math.nan) for r in rounds]
            if all(math.isnan(v) for v in values):
                continue
            axis.plot(rounds, values, style, marker="o", label=label)
        axis.set_xlabel("round")
        axis.set_xticks(rounds)
        axis.set_ylim(0.0, 1.02)
        axis.grid(alpha=0.3)
        axis.set_title(f"run {store.run_id}: student and pseudo-label quality by round", fontsize=10)
        if axis.lines:
            axis.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
        else:
            axis.text(0.5, 0.5, "no round has committed metrics yet", ha="center", transform=axis.transAxes)
        figure.savefig(path, bbox_inches="tight")
    finally:
        plt.close(figure)
