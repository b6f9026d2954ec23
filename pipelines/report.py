"""Tables for people: a run's stages (`prvos status`) and the round curve (`prvos demo`)."""

from __future__ import annotations

from rich.table import Table

from pipelines.lock import lock_holder
from pipelines.pipeline import split_stage, stage_plan
from pipelines.run_store import RunStore
from prvos_core.config import config_from_dict

KEY_METRICS = {
    "ingest": ("videos", "expressions", "quarantined"),
    "text": ("texts", "encoded"),
    "train": ("loss", "clips_per_second", "start_epoch"),
    "infer": ("expressions", "frames_per_second", "bytes_per_frame"),
    "refine": ("pseudo_precision_full", "teacher_precision_full", "pseudo_coverage_full", "kept_ratio"),
    "evaluate": ("JF", "J", "F"),
}


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


def round_curve(store: RunStore) -> Table:
    """Per round: the student's valid J&F, and the pseudo-label quality its teacher produced."""
    config = config_from_dict(store.read_config_dict())
    table = Table(title="round curve (valid split; pseudo-labels on the train split)")
    for column in ("round", "student J&F", "J", "F", "pseudo precision", "teacher precision", "pseudo coverage"):
        table.add_column(column, justify="right")
    for round_index in range(config.rounds + 1):
        evaluated = store.read_marker(f"r{round_index}-evaluate")
        refined = store.read_marker(f"r{round_index}-refine")
        row = [str(round_index)]
        row += [_fmt(evaluated.metrics.get(key)) if evaluated else "-" for key in ("JF", "J", "F")]
        row += [
            _fmt(refined.metrics.get(key)) if refined else "-"
            for key in ("pseudo_precision_full", "teacher_precision_full", "pseudo_coverage_full")
        ]
        table.add_row(*row)
    return table


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
