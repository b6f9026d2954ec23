"""Security: nothing is unpickled, YAML is loaded safely, every id that becomes a path is checked, servers bind
127.0.0.1, and credentials never sit in configs, run folders or logs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from prvos_core.errors import UserError
from tests.reliability.conftest import REPO, cli, write_config

PACKAGES = ("prvos_core", "stages", "pipelines", "benchmarks")
UNSAFE = ("../x", "a/b", "a\\b", "..", ".hidden", "", "x" * 200)


def _sources() -> list[Path]:
    return [path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))]


def test_no_pickle_loading_and_no_unsafe_yaml_in_the_code():
    problems = []
    for path in _sources():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            where = f"{path.relative_to(REPO)}:{number}: {line.strip()}"
            if re.search(r"\bpickle\.(load|loads|Unpickler)\b|\bcloudpickle\.load|\bjoblib\.load\b", code):
                problems.append(where)
            if re.search(r"(?<!safetensors\.)\btorch\.load\(", code) and "weights_only=True" not in code:
                problems.append(where)
            if re.search(r"\byaml\.(load|unsafe_load|full_load)\(|yaml\.Loader\b|UnsafeLoader", code):
                problems.append(where)
            if re.search(r"allow_pickle\s*=\s*True|(?<![.\w])(eval|exec)\(|shell\s*=\s*True", code):
                problems.append(where)
    assert problems == [], "\n".join(problems)
    assert len(_sources()) > 40  # the scan saw the code


def test_every_id_that_becomes_a_path_is_checked(tmp_path):
    from pipelines.run_store import RunStore, open_run
    from prvos_core.config import config_from_dict
    from prvos_core.errors import ConfigError
    from prvos_core.storage import id_problem

    for unsafe in UNSAFE:
        assert id_problem(unsafe), unsafe
        with pytest.raises(UserError):
            RunStore(str(tmp_path), unsafe)
        with pytest.raises(ConfigError):
            config_from_dict({"data": {"root": "d"}, "run": {"run_id": unsafe}})
        with pytest.raises(ConfigError):
            config_from_dict({"data": {"root": "d", "train_split": unsafe}})
    with pytest.raises(UserError, match="not a run folder"):
        open_run(str(tmp_path / ".."))
    assert not list(tmp_path.parent.glob("x*")), "nothing was created outside tmp_path"


def test_mlflow_ui_binds_127_0_0_1(tmp_path, capsys, monkeypatch):
    (tmp_path / "mlflow.db").write_bytes(b"")
    started = []
    monkeypatch.setattr(subprocess, "call", lambda command: started.append(command) or 0)
    outcome = cli("ui", "--root", tmp_path, "--port", "5123", capsys=capsys)
    assert outcome.code == 0, outcome.err
    (command,) = started
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert "0.0.0.0" not in " ".join(command) and "http://127.0.0.1:5123" in outcome.out


def test_embedded_ray_starts_no_dashboard():
    source = (REPO / "pipelines/ray_session.py").read_text()
    assert "include_dashboard=False" in source


def test_credentials_from_the_environment_never_reach_the_run_folder(tmp_path, capsys, ray_local, monkeypatch):
    """A storage secret in the environment (where PRVOS reads credentials from) appears nowhere in what a run
    writes: config, markers, manifest, MLflow database and artifacts, console output."""
    from prvos_core.datasets.synth import generate_synthetic

    secret = "S3CR3T-sentinel-9f2d0c"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-" + secret)
    generate_synthetic(tmp_path / "data", videos=1, valid_videos=1, frames=4, size=(32, 32), label_every=2, seed=0)
    config = write_config(
        tmp_path / "c.yaml",
        {"name": "sec", "run": {"root": str(tmp_path / "runs")}, "data": {"root": str(tmp_path / "data")}},
    )
    outcome = cli("run", config, "--stages", "ingest", "--run-id", "sec", capsys=capsys)
    assert outcome.code == 0, outcome.err[-2000:]
    assert secret not in outcome.out + outcome.err
    files = [path for path in (tmp_path / "runs").rglob("*") if path.is_file()]
    assert any(path.name == "mlflow.db" for path in files) and any(path.name == "config.yaml" for path in files)
    leaked = [str(path) for path in files if secret.encode() in path.read_bytes()]
    assert leaked == []
