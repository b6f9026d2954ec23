"""The tables a run prints keep each row on one line in a file and on a narrow terminal (`print_table`).

Rich fits a table to the console, 80 columns when it writes to a file or a pipe, by wrapping cells onto further
lines; the `prvos run` table itself is checked in a real run's output in tests/pipelines/test_console.py."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from pipelines.report import print_table, status_table
from pipelines.run_store import RunStore, StageMarker, split_stage, stage_plan
from prvos_core.config import config_from_dict

RUN_ID = "real-clips-laptop-20261202-181521"
INGEST_METRICS = "videos=3, expressions=6, quarantined=0"


@pytest.fixture
def store(tmp_path) -> RunStore:
    """A run with two committed stages, one started and the rest pending."""
    config = config_from_dict({"name": "t", "run": {"root": str(tmp_path)}, "data": {"root": str(tmp_path / "d")}})
    store = RunStore(str(tmp_path), RUN_ID)
    store.write_config(config)
    for stage, metrics in (("ingest", {"videos": 3.0, "expressions": 6.0, "quarantined": 0.0}), ("text", {})):
        store.write_marker(StageMarker(stage, "fp", {}, metrics, "2025-01-01T00:00:00", "2025-01-01T00:00:01", 1.5))
    (tmp_path / RUN_ID / "r0-train").mkdir()
    return store


def _body(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("│")]


@pytest.mark.parametrize("terminal", [False, True], ids=["file", "narrow terminal"])
def test_status_rows_stay_on_one_line(store, terminal):
    console = Console(file=io.StringIO(), width=30, force_terminal=terminal, color_system=None)
    plan = stage_plan(config_from_dict(store.read_config_dict()))
    print_table(console, status_table(store))
    lines = console.file.getvalue().splitlines()
    assert lines[0].strip() == f"run {RUN_ID}"
    body = _body(console.file.getvalue())
    for line, name in zip(body, plan, strict=True):
        assert f" {split_stage(name)[1]} " in line, (name, line)
    assert INGEST_METRICS in body[0] and "committed" in body[0]
    assert "interrupted" in body[plan.index("r0-train")]
    assert len({len(line) for line in lines if line.strip()}) == 1  # title, borders and rows: one width


def test_the_same_table_printed_plainly_would_wrap(store):
    """What print_table prevents: rich's default print at 30 columns spreads rows over several lines."""
    console = Console(file=io.StringIO(), width=30, color_system=None)
    console.print(status_table(store))
    body = _body(console.file.getvalue())
    assert len(body) > len(stage_plan(config_from_dict(store.read_config_dict())))
    assert not any(INGEST_METRICS in line for line in body)
