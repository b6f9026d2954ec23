"""End-to-end: unlabelled train videos and label regimes through the pipeline.

A tiny synthetic set with 2 labelled and 2 unlabelled train videos goes ingest -> text -> r0-train -> r0-infer
-> r0-refine -> r1-train: the teacher labels the unlabelled videos, refinement picks their frames, and round 1
trains on them. Label regimes and the unlabelled root's files are part of ingest's fingerprint.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.pipeline import run_pipeline
from prvos_core.config import config_from_dict
from prvos_core.data.clips import clip_sources
from prvos_core.data.manifest import read_manifest
from prvos_core.pseudo.store import chosen_pseudo_frames, committed_expressions, open_store
from tests.e2e.test_pipeline import reduced_config

SYNTH = {"videos": 2, "valid_videos": 1, "frames": 6, "size": [48, 48], "label_every": 3, "seed": 1}


def unlabelled_config(tmp_path: Path, **data) -> dict:
    raw = reduced_config(tmp_path)
    raw["data"] = {
        "root": str(tmp_path / "data"),
        "synth": {**SYNTH, "unlabelled_videos": 2, "create": True},
        "unlabelled_split": "unlabelled",
        **data,
    }
    # A 1-epoch teacher jumps between frames; the no-GT rules would reject what this test needs to see chosen.
    raw["refine"] = {**raw["refine"], "min_temporal_iou": 0.0}
    # One worker and one actor: fewer processes to start on a busy 2-core machine.
    raw["train"], raw["infer"] = {**raw["train"], "workers": 1}, {**raw["infer"], "actors": 1}
    return raw


@pytest.fixture(scope="module")
def unlabelled_run(tmp_path_factory, ray_local):
    tmp_path = tmp_path_factory.mktemp("unlabelled")
    config = config_from_dict(unlabelled_config(tmp_path))
    report = run_pipeline(config, run_id="u", stages=("ingest", "frames", "text", "train", "infer", "refine"))
    return config, report


@pytest.mark.slow
def test_unlabelled_videos_are_labelled_by_the_teacher_and_trained_on(unlabelled_run):
    config, report = unlabelled_run
    assert report.ran() == ["ingest", "frames", "text", "r0-train", "r0-infer", "r0-refine", "r1-train"]
    results = {name: outcome.result for name, outcome in report.outcomes.items()}
    manifest = read_manifest(results["ingest"].manifest_dir)
    unlabelled = {video.video_id: video for video in manifest.videos if not video.labelled}
    assert sorted(unlabelled) == ["synthu0000", "synthu0001"]
    assert all((v.split, v.folder, v.annotated_frames) == ("train", "unlabelled", ()) for v in unlabelled.values())
    expressions = [e for e in manifest.split_expressions("train") if e.video_id in unlabelled]
    assert expressions and all(e.gt_frames == () for e in expressions)
    ids = {e.expression_id for e in expressions}

    assert ids <= committed_expressions(open_store(results["r0-infer"].pseudo, mode="r"))
    chosen = chosen_pseudo_frames(open_store(results["r0-refine"].refined, mode="r"))
    assert all(chosen.get(expression_id) for expression_id in ids), {i: chosen.get(i) for i in ids}
    sources = clip_sources(manifest, "train", refined_store=results["r0-refine"].refined)
    trained = {source.expression.expression_id: source for source in sources}
    assert ids <= set(trained)
    assert all(trained[i].gt_frames == () and trained[i].pseudo_frames == chosen[i] for i in ids)
    # Round 1 trains on the unlabelled expressions too: more clips per epoch than round 0 had.
    assert results["r1-train"].step > results["r0-train"].step


def test_label_regime_and_unlabelled_root_are_in_ingests_fingerprint(tmp_path, ray_local):
    """train_labels=first: one ground-truth frame per train expression, the rest hidden; changing the regime or
    a file of the unlabelled root re-runs ingest."""
    from prvos_core.datasets.synth import generate_synthetic

    generate_synthetic(tmp_path / "other", **SYNTH, unlabelled_videos=1)
    data = {"synth": {**SYNTH, "create": True}, "unlabelled_root": str(tmp_path / "other"), "train_labels": "first"}
    config = config_from_dict(unlabelled_config(tmp_path, **data))
    first = run_pipeline(config, run_id="regime", stages=("ingest",))
    manifest = read_manifest(first.outcomes["ingest"].result.manifest_dir)
    train = manifest.split_expressions("train")
    labelled = [e for e in train if manifest.video_of(e).labelled]
    assert labelled and all(len(e.gt_frames) == 1 for e in labelled)
    assert sum(len(e.hidden_frames) for e in labelled) > 0
    assert all(set(e.gt_frames).isdisjoint(e.hidden_frames) for e in labelled)
    assert {manifest.video_of(e).dataset_root for e in train} == {str(tmp_path / "data"), str(tmp_path / "other")}
    assert all(e.gt_frames == () and e.hidden_frames == () for e in train if not manifest.video_of(e).labelled)

    assert run_pipeline(config, run_id="regime", stages=("ingest",)).ran() == []
    provided = config_from_dict(unlabelled_config(tmp_path, **{**data, "train_labels": "provided"}))
    again = run_pipeline(provided, run_id="regime", stages=("ingest",))
    assert again.ran() == ["ingest"]
    restored = read_manifest(again.outcomes["ingest"].result.manifest_dir)
    assert all(not e.hidden_frames for e in restored.expressions)
    (tmp_path / "other/unlabelled/JPEGImages/synthu0000/00005.jpg").unlink()
    assert run_pipeline(provided, run_id="regime", stages=("ingest",)).ran() == ["ingest"]
