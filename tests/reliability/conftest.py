"""Helpers of the reliability tests: the CLI in-process and as a real `prvos` process, and the checks every
bad input and every fault ends with (one clear line, no traceback, nothing half-written marked as done)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipelines import integrity
from pipelines.run_store import MARKER, RunStore
from tests.e2e.test_pipeline import reduced_config

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]


def cli(*args: str, capsys) -> Outcome:
    """`prvos ARGS` in this process (pipelines.cli.main, as the console script runs it)."""
    from pipelines import cli as cli_module

    capsys.readouterr()
    saved = sys.argv
    sys.argv = ["prvos", *map(str, args)]
    try:
        cli_module.main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = saved
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def prvos(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> Outcome:
    """`prvos ARGS` as its own process group (so a fault may kill the driver and everything it started)."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **(env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *map(str, args)],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout, start_new_session=True,
    )  # fmt: skip
    return Outcome(done.returncode, done.stdout, done.stderr)


def assert_one_line_error(outcome: Outcome, *fragments: str, code: int = 2) -> str:
    """Exit `code`, no traceback, exactly one `error:` line holding every fragment; returns that line."""
    assert outcome.code == code, (outcome.code, outcome.err[-2000:])
    assert "Traceback" not in outcome.err + outcome.out, outcome.err[-3000:]
    assert len(outcome.errors) == 1, outcome.err[-2000:]
    line = outcome.errors[0]
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def assert_nothing_half_committed(run_root: Path) -> int:
    """Every commit marker under `run_root` describes intact files (sizes and hashes); returns how many."""
    count = 0
    for marker in run_root.glob(f"*/*/{MARKER}"):
        stage_dir = marker.parent
        store = RunStore(str(stage_dir.parent.parent), stage_dir.parent.name)
        recorded = store.read_marker(stage_dir.name)
        assert recorded.files, f"{marker} records no files"
        assert integrity.verify(stage_dir.name, str(stage_dir), recorded.files, hashes=True) == [], marker
        count += 1
    return count


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def small_config(tmp_path) -> dict:
    """tests/e2e's reduced config (2 videos x 8 frames at 48x48, tiny model at 32x32, 1 epoch)."""
    return reduced_config(tmp_path)
