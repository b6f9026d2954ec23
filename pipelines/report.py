"""A run for people, from its stages' commit markers: the stages table (`prvos status`), what a run did (`prvos
run`), the round curve (`prvos demo`), and the rounds side by side as a table and a plot of the student's J&F and
the pseudo-label precision and coverage each round's teacher produced (`prvos inspect`). `print_table` prints
them with every row on one line, on a terminal of any width and in a file.

Reads markers only: no torch, Ray or stage module is imported here (matplotlib only when a plot is drawn).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from pipelines.lock import lock_holder
from pipelines.run_store import (
    EVALUATE,
    FRAMES,
    INFER,
    INGEST,
    REFINE,
    TEXT,
    TRAIN,
    RunStore,
    split_stage,
    stage_name,
    stage_plan,
)
from prvos_core.config import PrvosConfig, config_from_dict

if TYPE_CHECKING:
    from pipelines.runner import StageOutcome

KEY_METRICS = {
    INGEST: ("videos", "expressions", "quarantined"),
    FRAMES: ("frames", "bytes_per_frame", "frames_per_second"),
    TEXT: ("texts", "encoded"),
    TRAIN: ("loss", "clips_per_second", "start_epoch"),
    INFER: ("expressions", "frames_per_second", "bytes_per_frame"),
    REFINE: ("pseudo_precision_full", "teacher_precision_full", "pseudo_coverage_full", "kept_ratio"),
    EVALUATE: ("JF", "J", "F"),
}
# (column title, stage kind, metric key); every value comes from that stage's marker of the row's round.
COLUMNS = (
    ("student J&F", EVALUATE, "JF"),
    ("J", EVALUATE, "J"),
    ("F", EVALUATE, "F"),
    ("P@0.5", EVALUATE, "P0.5"),
    ("train loss", TRAIN, "loss"),
    ("teacher precision", REFINE, "teacher_precision"),
    ("pseudo precision", REFINE, "pseudo_precision"),
    ("pseudo recall", REFINE, "pseudo_recall"),
    ("pseudo coverage", REFINE, "pseudo_coverage"),
    ("pseudo precision (full)", REFINE, "pseudo_precision_full"),
    ("pseudo coverage (full)", REFINE, "pseudo_coverage_full"),
    ("object labelled (full)", REFINE, "pseudo_object_coverage_full"),
    ("threshold fg", REFINE, "threshold_fg"),
    ("threshold bg", REFINE, "threshold_bg"),
    ("frames kept", REFINE, "frames_pseudo_labelled"),
    ("frames rejected", REFINE, "frames_rejected"),
)
# Plotted lines: (label, stage kind, metric key, line style).
LINES = (
    ("student J&F (valid)", EVALUATE, "JF", "-"),
    ("pseudo precision (GT frames)", REFINE, "pseudo_precision", "-"),
    ("pseudo coverage (GT frames)", REFINE, "pseudo_coverage", "-"),
    ("pseudo precision (full masks)", REFINE, "pseudo_precision_full", "--"),
    ("pseudo coverage (full masks)", REFINE, "pseudo_coverage_full", "--"),
)


def status_table(store: RunStore) -> Table:
    config = config_from_dict(store.read_config_dict())
    running = lock_holder(store.run_dir)
    table = Table(title=f"run {store.run_id}" + (f"  (running: pid {running['pid']})" if running else ""))
    for column in ("round", "stage", "state", "seconds", "key metrics"):
        table.add_column(column)
    existing = set(store.stages())
    for name in stage_plan(config):
        round_index, kind = split_stage(name)
        marker = store.read_marker(name)
        if marker is not None:
            state, seconds = "committed", f"{marker.seconds:.1f}"
            shown = [f"{key}={marker.metrics[key]:.4g}" for key in KEY_METRICS[kind] if key in marker.metrics]
        else:
            state = ("running" if running else "interrupted") if name in existing else "pending"
            seconds, shown = "", []
        table.add_row("" if round_index is None else str(round_index), kind, state, seconds, ", ".join(shown))
    return table


def run_table(store: RunStore, outcomes: Mapping[str, StageOutcome]) -> Table:
    """What one `prvos run` did: each stage of the plan it reached, run or skipped, with its time."""
    table = Table(title=f"run {store.run_id}  ({store.run_dir})")
    for column in ("stage", "ran", "seconds"):
        table.add_column(column)
    for name, outcome in outcomes.items():
        seconds = outcome.result.metrics.get("seconds")
        ran = ("yes (repaired)" if outcome.repaired else "yes") if outcome.ran else "skipped (committed)"
        table.add_row(name, ran, "" if seconds is None else f"{seconds:.1f}")
    return table


_UNBOUNDED = 100_000  # a console width no table reaches: measures a table's natural width


def print_table(console: Console, table: Table) -> None:
    """Print `table` with each row, and its title, on one line whatever the console's width (it sets the table's
    width). Rich fits a table to the console, 80 columns when it writes to a file or a pipe, by wrapping cells
    over several lines: rows of a log would no longer be one line each to read, grep or copy. A terminal
    narrower than the table folds the long lines itself."""
    content = Measurement.get(console, console.options.update_width(_UNBOUNDED), table).maximum
    table.width = max(content, cell_len(str(table.title or "")))  # a title wider than the table would wrap
    console.print(table, crop=False)


def round_curve(store: RunStore) -> Table:
    """Per round: the student's valid J&F, and the pseudo-label quality its teacher produced."""
    config = config_from_dict(store.read_config_dict())
    metrics = _metrics(store, config)
    table = Table(title="round curve (valid split; pseudo-labels on the train split)")
    for column in ("round", "student J&F", "J", "F", "pseudo precision", "teacher precision", "pseudo coverage"):
        table.add_column(column, justify="right")
    for round_index in range(config.rounds + 1):
        evaluated, refined = metrics.get((round_index, EVALUATE)), metrics.get((round_index, REFINE))
        row = [str(round_index)]
        row += [_fmt(evaluated.get(key)) if evaluated is not None else "-" for key in ("JF", "J", "F")]
        row += [
            _fmt(refined.get(key)) if refined is not None else "-"
            for key in ("pseudo_precision_full", "teacher_precision_full", "pseudo_coverage_full")
        ]
        table.add_row(*row)
    return table


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


def _metrics(store: RunStore, config: PrvosConfig) -> dict[tuple[int, str], dict[str, float]]:
    """(round, stage kind) -> the committed stage's metrics, for every round's train, refine and evaluate."""
    found = {}
    for round_index in range(config.rounds + 1):
        for kind in (TRAIN, REFINE, EVALUATE):
            marker = store.read_marker(stage_name(kind, round_index))
            if marker is not None:
                found[(round_index, kind)] = marker.metrics
    return found


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
