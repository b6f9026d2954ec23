"""Tests of stages.evaluate on the tiny synthetic run: its numbers equal prvos_core.metrics on predictions made
in-process with prvos_core.inference.predict (per expression, overall, per annotator), it runs the student and not the
EMA teacher, and a split without ground truth gives the Ref-YouTube-VOS submission zip."""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from prvos_core.config import EvaluateSection
from prvos_core.data.manifest import Manifest, read_manifest, write_manifest
from prvos_core.inference.predict import load_predictor, predict_expression, upsample_prob
from prvos_core.metrics import evaluate_expression, overall_iou, summarize
from prvos_core.model.builders import build_model
from prvos_core.model.checkpoint import save_checkpoint
from prvos_core.model.ema import EmaTeacher
from prvos_core.text.cache import TextCache
from stages import evaluate

SIZE = (32, 32)
MLFLOW_SAFE = re.compile(r"[A-Za-z0-9_\-./ ]+")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_run) -> str:
    """A seeded random tiny student, saved with an EMA teacher of other weights (another seed)."""
    torch.manual_seed(3)
    student = build_model("tiny", text_dim=tiny_run.text_dim, pretrained=False)
    torch.manual_seed(4)
    teacher = EmaTeacher(build_model("tiny", text_dim=tiny_run.text_dim, pretrained=False), decay=0.5)
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    return str(save_checkpoint(folder, student, ema=teacher, meta={"epoch": 0, "step": 0, "round": 0}))


@pytest.fixture(scope="module")
def tagged_manifest(tmp_path_factory, tiny_run) -> str:
    """tiny_run's manifest with its valid expressions tagged as Ref-DAVIS17's are: annotator 1 or 2, and kind."""
    manifest = read_manifest(tiny_run.manifest_dir)
    tagged = tuple(
        replace(e, annotator=1 + i % 2, kind=("first_frame", "full_video")[i % 2]) if e.split == "valid" else e
        for i, e in enumerate(manifest.expressions)
    )
    folder = tmp_path_factory.mktemp("tagged")
    write_manifest(str(folder), Manifest(manifest.videos, tagged, ()))
    return str(folder)


def _predicted_masks(tiny_run, checkpoint: str, weights: str) -> dict[str, np.ndarray]:
    """Expression id -> predicted masks (T, H, W) uint8 0/1 at the original size, every frame, made in-process
    on one torch thread as the actors run (the same floats, so the same thresholded masks)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    manifest = read_manifest(tiny_run.manifest_dir)
    model = load_predictor(checkpoint, weights, torch.device("cpu"))
    cache = TextCache(tiny_run.text_cache, tiny_run.text_identity)
    masks = {}
    for expression in manifest.split_expressions("valid"):
        video = manifest.video(expression.video_id, "valid")
        words, word_mask = cache.lookup([expression.text])
        frames = predict_expression(model, video, expression, words[0], word_mask[0], SIZE, first_mask_from_gt=False,
                                    memory_frames=EvaluateSection().memory_frames)  # fmt: skip
        masks[expression.expression_id] = np.stack(
            [(upsample_prob(prob, (video.height, video.width)) > 0.5).astype(np.uint8) for _, prob in frames]
        )
    torch.set_num_threads(threads)
    return masks


@pytest.fixture(scope="module")
def student_masks(tiny_run, checkpoint) -> dict[str, np.ndarray]:
    return _predicted_masks(tiny_run, checkpoint, "student")


def _ground_truth(tiny_run, expression) -> np.ndarray:
    """(T, H, W) bool masks of the expression's object on its annotated frames, read with PIL."""
    folder = tiny_run.data / "valid" / "Annotations" / expression.video_id
    return np.stack(
        [np.array(Image.open(folder / f"{f}.png")) == int(expression.object_id) for f in expression.gt_frames]
    )


def test_scores_equal_prvos_core_metrics_on_the_same_predictions(tiny_run, checkpoint, tagged_manifest,
                                                                  student_masks, tmp_path):  # fmt: skip
    inputs = evaluate.EvaluateInputs(tagged_manifest, tiny_run.text_cache, tiny_run.text_identity, checkpoint,
                                     "valid", str(tmp_path), SIZE)  # fmt: skip
    result = evaluate.run(inputs, EvaluateSection(actors=2))
    expressions = read_manifest(tagged_manifest).split_expressions("valid")
    assert all(e.gt_frames for e in expressions)
    table = pq.read_table(tmp_path / "per_expression.parquet").to_pandas().set_index("expression_id")
    assert sorted(table.index) == sorted(e.expression_id for e in expressions)
    gts, preds, scores = [], [], {}
    for e in expressions:
        gt = _ground_truth(tiny_run, e)
        pred = student_masks[e.expression_id][[e.all_frames.index(f) for f in e.gt_frames]]
        gts.append(gt)
        preds.append(pred)
        scores[e.expression_id] = evaluate_expression(gt, pred)
        row = table.loc[e.expression_id]
        assert row.J == pytest.approx(scores[e.expression_id]["J"], abs=1e-9)
        assert row.F == pytest.approx(scores[e.expression_id]["F"], abs=1e-9)
        assert row.JF == pytest.approx(scores[e.expression_id]["JF"], abs=1e-9)
        assert (row.video_id, row.exp_key, row.object_id) == (e.video_id, e.exp_key, e.object_id)
        assert (row.annotator, row.kind, row.n_frames) == (e.annotator, e.kind, len(e.gt_frames))
    assert 0 < np.mean([s["J"] for s in scores.values()]) < 1  # real masks, neither empty nor perfect

    overall = summarize([s["J"] for s in scores.values()], [s["F"] for s in scores.values()])
    for key, value in overall.items():
        assert result.scores[key.replace("J&F", "JF").replace("P@", "P")] == pytest.approx(value, abs=1e-9), key
    assert result.scores["overall_iou"] == pytest.approx(overall_iou(gts, preds), abs=1e-12)
    for annotator in (1, 2):
        own = [scores[e.expression_id] for e in expressions if e.annotator == annotator]
        part = summarize([s["J"] for s in own], [s["F"] for s in own])
        for key, value in part.items():  # J, F, J&F and P@0.5..0.9 of each annotator
            name = key.replace("J&F", "JF").replace("P@", "P")
            assert result.scores[f"{name}_annotator{annotator}"] == pytest.approx(value, abs=1e-9), key
    for name in ("JF", "P0.5"):
        halves = [result.scores[f"{name}_annotator1"], result.scores[f"{name}_annotator2"]]
        assert result.scores[f"{name}_annotator_mean"] == pytest.approx(np.mean(halves), abs=1e-12)
    assert result.expressions == len(expressions)
    assert result.frames == sum(len(e.gt_frames) for e in expressions)
    assert all(MLFLOW_SAFE.fullmatch(key) for key in result.metrics)
    assert json.loads((tmp_path / "metrics.json").read_text()) == pytest.approx(result.metrics)


def test_the_student_runs_not_the_ema_teacher(tiny_run, checkpoint, student_masks):
    """The comparison above tells the two apart: the teacher's masks differ from the student's."""
    teacher_masks = _predicted_masks(tiny_run, checkpoint, "ema")
    assert any(not np.array_equal(teacher_masks[key], masks) for key, masks in student_masks.items())


def test_a_split_without_ground_truth_gives_the_submission_zip(tiny_run, checkpoint, student_masks, tmp_path):
    manifest = read_manifest(tiny_run.manifest_dir)
    no_gt = tuple(replace(e, gt_frames=()) for e in manifest.expressions)
    write_manifest(str(tmp_path / "manifest"), Manifest(manifest.videos, no_gt, ()))
    out = tmp_path / "out"
    inputs = evaluate.EvaluateInputs(str(tmp_path / "manifest"), tiny_run.text_cache, tiny_run.text_identity,
                                     checkpoint, "valid", str(out), SIZE)  # fmt: skip
    result = evaluate.run(inputs, EvaluateSection(actors=1))
    valid = [e for e in no_gt if e.split == "valid"]
    assert result.to_marker()[0] == {"submission": str(out / "submission.zip")}
    assert [p.name for p in out.iterdir()] == ["submission.zip"]  # nothing staged is left behind
    with zipfile.ZipFile(out / "submission.zip") as bundle:
        expected = {f"Annotations/{e.video_id}/{e.exp_key}/{f}.png": (e, t) for e in valid
                    for t, f in enumerate(e.all_frames)}  # fmt: skip
        assert sorted(bundle.namelist()) == sorted(expected)
        for name, (expression, t) in expected.items():
            image = Image.open(io.BytesIO(bundle.read(name)))
            assert image.mode == "L" and image.size == (48, 48)
            pixels = np.array(image)
            assert set(np.unique(pixels)) <= {0, 255}
            np.testing.assert_array_equal(pixels, student_masks[expression.expression_id][t] * 255)
    assert result.expressions == len(valid)
    assert result.frames == len(expected)
