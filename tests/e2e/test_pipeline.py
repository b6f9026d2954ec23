"""End-to-end: a reduced demo config through every stage, re-runs that recompute nothing, a changed refine
setting that re-runs only what depends on it, MLflow lineage.

The driver SIGKILLed mid-infer and resumed to the bytes of an uninterrupted run is in
tests/reliability/test_faults.py (the fault chain kills the driver in r0-train, r0-infer, r0-refine and
r0-evaluate and compares every file infer, refine and evaluate wrote)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipelines.pipeline import run_pipeline
from pipelines.run_store import stage_plan
from prvos_core.config import config_from_dict


def reduced_config(tmp_path: Path, **changes) -> dict:
    raw = {
        "name": "e2e",
        "rounds": 1,
        "run": {"root": str(tmp_path / "runs"), "seed": 0},
        "data": {
            "root": str(tmp_path / "data"),
            "synth": {
                "videos": 2,
                "valid_videos": 1,
                "frames": 8,
                "size": [48, 48],
                "label_every": 4,
                "seed": 1,
                "create": True,
            },
        },
        "model": {"size": "tiny", "input_size": [32, 32]},
        "train": {"workers": 2, "epochs": 1, "batch_size": 2, "clip_frames": 2},
        "infer": {"actors": 2},
        "evaluate": {"actors": 2},
        # A 1-epoch student predicts objects far off their annotated size, so the area rule would reject
        # every pseudo-labelled frame; without it round 1 still trains on pseudo-labels, as these tests need.
        "refine": {"min_area_ratio": 0.0, "max_area_ratio": None},
    }
    raw.update(changes)
    return raw


@pytest.fixture(scope="module")
def finished_run(reduced_run):
    return reduced_run


def test_every_stage_runs_and_commits(finished_run):
    tmp_path, config, report = finished_run
    assert list(report.outcomes) == stage_plan(config)
    assert report.ran() == stage_plan(config)
    for name in stage_plan(config):
        assert report.store.read_marker(name) is not None, name
    evaluated = report.store.read_marker("r1-evaluate").metrics
    assert 0.0 <= evaluated["JF"] <= 1.0 and "P0.5" in evaluated
    refined = report.store.read_marker("r0-refine").metrics
    assert 0.0 < refined["kept_ratio"] <= 1.0


def test_rerun_recomputes_nothing(finished_run, ray_local):
    tmp_path, config, _ = finished_run
    started = time.perf_counter()
    again = run_pipeline(config, run_id="first")
    assert again.ran() == []
    assert time.perf_counter() - started < 5.0


def test_mlflow_holds_parent_round_and_stage_runs(finished_run):
    from mlflow.tracking import MlflowClient

    from pipelines.lineage import default_tracking_uri

    tmp_path, config, report = finished_run
    client = MlflowClient(default_tracking_uri(config.run.root))
    experiment = client.get_experiment_by_name("prvos/e2e")
    runs = client.search_runs([experiment.experiment_id], max_results=200)
    parent = next(r for r in runs if r.data.tags.get("prvos.run_id") == "first")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    rounds = {r.data.tags["prvos.round"]: r for r in children if "prvos.stage" not in r.data.tags}
    assert set(rounds) == {"0", "1"}
    stages = [r for r in runs if "prvos.stage" in r.data.tags and r.info.run_id != parent.info.run_id]
    train0 = next(r for r in stages if r.data.tags["prvos.stage"] == "r0-train")
    assert train0.data.tags["mlflow.parentRunId"] == rounds["0"].info.run_id
    assert train0.data.params["train.epochs"] == "1" and "loss" in train0.data.metrics
    assert train0.data.tags["prvos.fingerprint"] == report.store.read_marker("r0-train").fingerprint
    assert train0.data.tags["prvos.output.checkpoint"].endswith("checkpoint")
    ingest_run = next(r for r in stages if r.data.tags["prvos.stage"] == "ingest")
    assert ingest_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.inputs.dataset_inputs, "the manifest is logged as the parent's input dataset"
    refine_run = next(r for r in stages if r.data.tags["prvos.stage"] == "r0-refine")
    artifacts = [a.path for a in client.list_artifacts(refine_run.info.run_id)]
    assert "summary.json" in artifacts


# Last: it changes the shared run's refine setting.
def test_changed_refine_setting_reruns_refine_and_what_follows(finished_run, ray_local):
    tmp_path, config, _ = finished_run
    changed = config_from_dict({**config.to_dict(), "refine": {**config.to_dict()["refine"], "percentile": 40.0}})
    report = run_pipeline(changed, run_id="first")
    assert report.ran() == ["r0-refine", "r1-train", "r1-evaluate"]
