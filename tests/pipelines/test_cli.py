"""The `prvos` command line: user errors are one line with a non-zero exit; ingest runs and resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PRVOS = [sys.executable, "-m", "pipelines.cli"]
REPO = Path(__file__).resolve().parents[2]


def prvos(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
    return subprocess.run([*PRVOS, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def _config(tmp_path: Path, data_root: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(f"name: t\nrun: {{root: {tmp_path / 'runs'}}}\ndata: {{root: {data_root}}}\n")
    return path


def test_user_errors_are_one_line(tmp_path):
    config = _config(tmp_path, tmp_path / "nope")
    assert_one_line_error(prvos("run", str(tmp_path / "missing.yaml"), cwd=tmp_path), "missing.yaml", "not found")
    assert_one_line_error(
        prvos("run", str(config), "--set", "ingest.chunkframes=3", cwd=tmp_path), "ingest.chunk_frames"
    )
    assert_one_line_error(prvos("run", str(config), "--stages", "ingets", cwd=tmp_path), "unknown stage", "ingest")
    assert_one_line_error(prvos("run", str(config), "--stages", "ingest", cwd=tmp_path), str(tmp_path / "nope"))
    assert_one_line_error(prvos("data", "synth", "--out", str(tmp_path / "s"), "--frames", "0", cwd=tmp_path), "frames")
    (tmp_path / "plain").mkdir()
    assert_one_line_error(prvos("status", str(tmp_path / "plain"), cwd=tmp_path), "not a PRVOS run")
    bad_json = tmp_path / "bad"
    (bad_json / "meta_expressions/train").mkdir(parents=True)
    (bad_json / "meta_expressions/train/meta_expressions.json").write_text('{"videos": [1, 2')
    result = prvos("run", str(_config(tmp_path, bad_json)), "--stages", "ingest", cwd=tmp_path)
    assert_one_line_error(result, "meta_expressions.json", "malformed JSON")


def test_label_regime_and_unlabelled_split_errors_are_one_line(shared_data, tmp_path):
    demo = str(REPO / "configs/demo.yaml")
    result = prvos("run", demo, "--set", "data.train_labels=every:x", cwd=tmp_path)
    assert_one_line_error(result, "data.train_labels", "every:x", "does not parse")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists(), "nothing written"
    config = _config(tmp_path, shared_data / "ref_davis16_mini")
    result = prvos("run", str(config), "--stages", "ingest", "--set", "data.unlabelled_split=nope", cwd=tmp_path)
    looked_for = shared_data / "ref_davis16_mini" / "meta_expressions/nope/meta_expressions.json"
    assert_one_line_error(result, "data.unlabelled_split 'nope'", str(looked_for), "new_nope.json")


def test_data_synth_writes_unlabelled_videos(tmp_path):
    out = tmp_path / "s"
    result = prvos(
        "data", "synth", "--out", str(out), "--videos", "1", "--valid-videos", "1", "--frames", "3",
        "--size", "16", "16", "--unlabelled-videos", "2", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "unlabelled/JPEGImages").iterdir()) == ["synthu0000", "synthu0001"]
    assert (out / "meta_expressions/unlabelled/meta_expressions.json").is_file()
    assert not (out / "unlabelled/Annotations").exists()
    assert len(list(out.glob("unlabelled/full_annotations/*/*.png"))) == 6


def test_ingest_from_the_cli_then_rerun_skips(shared_data, tmp_path):
    """Relative roots given with --set are made absolute (Ray's workers run elsewhere) and the run goes through."""
    config = _config(tmp_path, tmp_path / "nope")
    (tmp_path / "data").symlink_to(shared_data / "ref_davis16_mini")
    relative = ("--set", "data.root=data", "--set", "run.root=runs")
    first = prvos("run", str(config), "--stages", "ingest", "--run-id", "r1", *relative, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    saved = (tmp_path / "runs/r1/config.yaml").read_text()
    assert f"root: {tmp_path / 'data'}" in saved and f"root: {tmp_path / 'runs'}" in saved, saved
    assert "ingest" in first.stdout and "yes" in first.stdout
    marker = tmp_path / "runs/r1/ingest/_COMMITTED.json"
    assert json.loads(marker.read_text())["metrics"]["expressions"] == 6
    before = marker.read_bytes()
    second = prvos("run", str(config), "--stages", "ingest", "--run-id", "r1", *relative, cwd=tmp_path)
    assert second.returncode == 0 and "skipped" in second.stdout
    assert marker.read_bytes() == before
    status = prvos("status", str(tmp_path / "runs/r1"), cwd=tmp_path)
    assert status.returncode == 0 and "committed" in status.stdout and "ingest" in status.stdout


# `prvos status` in a process where torch, Ray, MLflow and the stages cannot be imported; the blocker notes every
# attempt, so an optional import that a library swallows is caught too.
STATUS_WITHOUT_HEAVY_IMPORTS = """
import sys
attempts = []
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'ray', 'mlflow', 'stages'}:
            attempts.append(name)
            raise ImportError(f'blocked import of {name}')
        return None
sys.meta_path.insert(0, Blocker())
sys.argv = ['prvos', 'status', *sys.argv[1:]]
from pipelines.cli import main
try:
    main()
finally:
    print('blocked imports:', sorted(set(attempts)), file=sys.stderr)
"""


@pytest.mark.parametrize("verify", [[], ["--verify"]])
def test_status_reads_markers_without_torch_ray_or_stages(tmp_path, verify):
    from pipelines.run_store import RunStore, StageMarker
    from prvos_core.config import config_from_dict

    config = config_from_dict({"name": "t", "run": {"root": str(tmp_path)}, "data": {"root": str(tmp_path / "d")}})
    store = RunStore(str(tmp_path), "light")
    store.write_config(config)
    for stage, metrics in (("ingest", {"videos": 3.0, "expressions": 6.0}), ("text", {"texts": 6.0})):
        store.write_marker(StageMarker(stage, "fp", {}, metrics, "2025-01-01T00:00:00", "2025-01-01T00:00:01", 1.5))
    (tmp_path / "light" / "r0-train").mkdir()  # started, no marker

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", STATUS_WITHOUT_HEAVY_IMPORTS, store.run_dir, *verify]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "blocked imports: []" in result.stderr, result.stderr[-3000:]
    assert "run light" in result.stdout and "videos=3, expressions=6" in result.stdout, result.stdout
    table = result.stdout.split("verified:")[0]
    assert table.count("committed") == 2 and "interrupted" in table and "pending" in table, result.stdout
    if verify:
        assert "verified: 2 committed stage(s)" in result.stdout, result.stdout


@pytest.mark.parametrize("command", [["--help"], ["data", "--help"], ["run", "--help"]])
def test_help(command, tmp_path):
    result = prvos(*command, cwd=tmp_path)
    assert result.returncode == 0 and "Usage" in result.stdout
