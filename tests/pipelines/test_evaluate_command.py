"""`prvos evaluate` (pipelines.evaluate_any): a checkpoint that is not part of a run, on a converted Ref-DAVIS17
root (scores per annotator and their mean), on a MeViS root (converted in the work folder: scores of the union
targets on valid_u, the MeViS submission zip on valid), and the bad inputs a user meets, each in one line."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from rich.console import Console

from pipelines.evaluate_any import (
    EvaluationRequest,
    checkpoint_meta,
    dataset_split,
    evaluate_checkpoint,
    results_table,
)
from prvos_core.errors import CheckpointError, DataError
from prvos_core.metrics import summarize, summarize_groups
from prvos_core.model.builders import SIZES, build_model, model_spec
from prvos_core.model.checkpoint import save_checkpoint
from tests.pipelines.test_cli import assert_one_line_error, prvos
from tests.prvos_core.datasets.test_mevis import FRAMES, make_mevis

MINILM_DIM = 384


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A seeded random tiny student in a folder of its own (no run around it: MiniLM is its text encoder)."""
    torch.manual_seed(5)
    model = build_model("tiny", text_dim=MINILM_DIM, pretrained=False)
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    return str(save_checkpoint(folder, model, meta={"epoch": 0, "step": 0, "round": 0}))


@pytest.fixture(scope="module")
def ref_davis(tmp_path_factory, shared_data):
    """The Ref-DAVIS17 test tree of tests/prvos_core/datasets/test_davis.py (real frames), converted."""
    from prvos_core.datasets.davis import convert_davis
    from tests.prvos_core.datasets.test_davis import _make_davis, _make_text

    tmp = tmp_path_factory.mktemp("davis")
    _make_davis(shared_data, tmp / "DAVIS")
    convert_davis(tmp / "DAVIS", _make_text(tmp / "text"), tmp / "converted")
    return tmp / "converted"


def _request(checkpoint, data, split, out) -> EvaluationRequest:
    return EvaluationRequest(checkpoint, str(data), split, out, actors=1)


def test_ref_davis17_scores_each_annotator_and_their_mean(checkpoint, ref_davis, tmp_path, ray_local):
    report = evaluate_checkpoint(_request(checkpoint, ref_davis, None, tmp_path / "eval"))
    assert (report.benchmark, report.split, report.model_size) == ("Ref-DAVIS17", "valid", "tiny")
    table = pq.read_table(report.per_expression).to_pandas()
    assert len(table) == report.expressions == 8  # cows: 2 objects x 2 annotators x 2 kinds; the calf quarantined
    assert report.quarantined >= 1
    groups, mean = summarize_groups(list(table.annotator), list(table.J), list(table.F))
    for annotator, part in groups.items():
        for key, value in part.items():
            name = key.replace("J&F", "JF").replace("P@", "P")
            assert report.scores[f"{name}_annotator{annotator}"] == pytest.approx(value, abs=1e-12)
            assert report.scores[f"{name}_annotator_mean"] == pytest.approx(mean[key], abs=1e-12)
    assert report.scores["JF"] == pytest.approx(summarize(list(table.J), list(table.F))["J&F"], abs=1e-12)
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["scores"] == pytest.approx(report.scores)
    assert sorted(saved["table"]) == ["all", "annotator 1", "annotator 2", "annotator mean"]
    assert saved["table"]["annotator mean"] == pytest.approx(
        {"J": mean["J"], "F": mean["F"], "J&F": mean["J&F"], **{f"P@0.{t}": mean[f"P@0.{t}"] for t in range(5, 10)}}
    )
    shown = Console(record=True, width=120)
    shown.print(results_table(report))
    text = shown.export_text()
    assert "annotator mean" in text and f"{100 * report.scores['JF_annotator_mean']:.1f}" in text

    # Run again into the same folder: every stage is committed with the same fingerprint and is skipped.
    marker = tmp_path / "eval" / "work" / "evaluate" / "_COMMITTED.json"
    before = marker.read_bytes()
    again = evaluate_checkpoint(_request(checkpoint, ref_davis, "valid", tmp_path / "eval"))
    assert again.scores == report.scores and marker.read_bytes() == before


def test_mevis_root_scores_union_targets_and_writes_its_submission(checkpoint, tmp_path, ray_local):
    root = make_mevis(tmp_path / "mevis")
    scored = evaluate_checkpoint(_request(checkpoint, root, "valid_u", tmp_path / "valid_u"))
    assert scored.benchmark == "MeViS" and scored.submission is None
    table = pq.read_table(scored.per_expression).to_pandas().set_index("exp_key")
    assert sorted(table.index) == ["0", "1"]  # 2: its object has no mask (quarantined); 3: no target (left out)
    assert table.loc["1", "object_id"] == "1-2" and table.loc["1", "n_frames"] == len(FRAMES)
    assert scored.quarantined == 1
    assert 0 <= scored.scores["J"] <= 1 and "JF_annotator_mean" not in scored.scores

    online = evaluate_checkpoint(_request(checkpoint, root, "valid", tmp_path / "valid"))
    assert online.scores == {} and online.expressions == 4
    check = online.submission_check
    assert (check["benchmark"], check["expected"], check["found"]) == ("MeViS", 4 * len(FRAMES), 4 * len(FRAMES))
    assert (check["missing"], check["unexpected"], check["malformed"]) == (0, 0, 0)
    with zipfile.ZipFile(online.submission) as bundle:
        names = sorted(bundle.namelist())
        assert names[0] == "walk_valid/0/00000.png" and len(names) == 4 * len(FRAMES)
        mask = np.frombuffer(bundle.read(names[0]), np.uint8)
    assert mask.size > 0
    shown = Console(record=True, width=200)
    shown.print(results_table(online))
    assert "layout as the benchmark expects" in shown.export_text()


def test_checkpoint_of_another_model_size_is_one_line(checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint there"):
        checkpoint_meta(str(tmp_path / "absent"))
    folder = shutil.copytree(checkpoint, tmp_path / "relabelled")
    saved = json.loads((folder / "checkpoint.json").read_text())
    # checkpoint.json says r50 but the spec is still tiny's: the two disagree.
    (folder / "checkpoint.json").write_text(json.dumps({**saved, "size": "r50"}))
    with pytest.raises(CheckpointError, match="holds a model of another size than 'r50'") as error:
        checkpoint_meta(str(folder))
    assert "\n" not in str(error.value)
    # checkpoint.json is a consistent r50 one, the weights are tiny's.
    r50 = model_spec("r50", text_dim=MINILM_DIM, trainable=saved["trainable"]).to_dict()
    (folder / "checkpoint.json").write_text(json.dumps({**saved, "size": "r50", "spec": r50}))
    with pytest.raises(CheckpointError, match=r"model.safetensors holds weights of another model size than the 'r50'"):
        checkpoint_meta(str(folder))
    (folder / "checkpoint.json").write_text(json.dumps({**saved, "size": "r101"}))
    with pytest.raises(
        CheckpointError, match=rf"model size 'r101', which this PRVOS does not build \({', '.join(SIZES)}\)"
    ):
        checkpoint_meta(str(folder))


def test_dataset_root_without_the_split_is_one_line(shared_data, tmp_path):
    with pytest.raises(DataError, match=r"has no split 'test' .*its splits: train, valid; pass one with --split"):
        dataset_split(str(shared_data / "ref_davis16_mini"), "test")
    root = make_mevis(tmp_path / "mevis", ("train",))
    with pytest.raises(DataError, match="its splits: train;"):
        dataset_split(str(root), None)
    assert dataset_split(str(root), "train") == (root, "train", True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="it has no split at all"):
        dataset_split(str(tmp_path / "empty"), None)


def test_command_line_errors_are_one_line(checkpoint, shared_data, tmp_path):
    result = prvos("evaluate", "--checkpoint", str(tmp_path / "nope"), "--data", str(shared_data), cwd=tmp_path)
    assert_one_line_error(result, "nope", "no checkpoint there")
    data = str(shared_data / "cutie_judo_sparse")
    result = prvos("evaluate", "--checkpoint", checkpoint, "--data", data, cwd=tmp_path)
    assert_one_line_error(result, "has no split 'valid'", "its splits: train")
    assert not (tmp_path / "evaluations").exists(), "nothing written before the inputs are checked"
