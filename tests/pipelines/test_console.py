"""What a user sees of a normal `prvos run` on an embedded Ray: no Ray notice about token authentication, no line
of Ray's C++ core worker, no library INFO lines, and the run table with each stage on one line although stdout is a pipe on a
40-column console.

The run is tests/e2e's reduced config through ingest, frames, text, one Ray Train round and evaluate's Ray Data
actor pool (the Ray start, the train stage and the pool's actors are what printed those lines); the process gets no RAY_AUTH_MODE or Ray Train setting of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from tests.e2e.test_pipeline import reduced_config

REPO = Path(__file__).resolve().parents[2]
STAGES = ("ingest", "frames", "text", "r0-train", "r0-evaluate")


def test_a_run_prints_no_ray_notice_and_keeps_its_table_rows_whole(tmp_path):
    raw = reduced_config(tmp_path, rounds=0)
    raw["train"] = {**raw["train"], "workers": 1}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    # Ray's own folder under /tmp (its socket paths must stay short), apart from any other Ray on the machine.
    ray_dir = tempfile.mkdtemp(prefix="prvos-ray-", dir="/tmp")
    user_settings = ("RAY_AUTH_MODE", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RAY_ADDRESS")
    env = {key: value for key, value in os.environ.items() if key not in user_settings}
    env.update(PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=ray_dir, COLUMNS="40")
    command = [sys.executable, "-m", "pipelines.cli", "run", str(config), "--run-id", "console",
               "--stages", "ingest,frames,text,train,evaluate"]  # fmt: skip
    try:
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Token authentication" not in done.stderr, done.stderr[-3000:]
    assert "core_worker.cc" not in done.stderr, done.stderr[-3000:]  # e.g. the pool actors' constructor arguments
    assert "INFO mlflow" not in done.stderr and "Updating database tables" not in done.stderr, done.stderr[-3000:]
    assert "Warning:" not in done.stderr, done.stderr[-3000:]  # e.g. Ray Data's deprecation of remote args

    run_dir = tmp_path / "runs" / "console"
    lines = done.stdout.splitlines()
    assert lines[0].strip() == f"run console  ({run_dir})"
    rows = [line for line in lines if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == list(STAGES), done.stdout
    assert all(row.split("│")[2].strip() == "yes" for row in rows), done.stdout
    assert f"next: prvos status {run_dir}" in done.stdout
