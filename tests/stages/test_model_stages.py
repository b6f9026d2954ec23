"""infer, refine and evaluate on a tiny synthetic run: resumable and byte-identical, and their numbers equal
prvos_core called directly on the same arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import zarr

from prvos_core.config import EvaluateSection, InferSection
from prvos_core.frames import read_object_mask
from prvos_core.layout import SplitPaths
from prvos_core.manifest import read_manifest
from prvos_core.metrics import evaluate_expression, summarize
from prvos_core.model import EmaTeacher, build_model, save_checkpoint
from prvos_core.predict import load_predictor, predict_expression, upsample_prob
from prvos_core.pseudo_quality import RefineSummary
from prvos_core.pseudo_store import open_store, read_pseudo_label, read_refined
from prvos_core.refine import ConfidenceHistogram, RefineConfig, choose_thresholds, refine_expression
from prvos_core.text_cache import TextCache
from stages import evaluate, infer, refine

SIZE = (32, 32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_run) -> str:
    torch.manual_seed(3)
    model = build_model("tiny", text_dim=tiny_run.text_dim, pretrained=False)
    ema = EmaTeacher(model, decay=0.5)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)
    ema.update(model)
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    save_checkpoint(folder, model, ema=ema, meta={"epoch": 0, "step": 0, "round": 0})
    return str(folder)


def _infer_inputs(tiny_run, checkpoint, out_dir) -> infer.InferInputs:
    return infer.InferInputs(tiny_run.manifest_dir, tiny_run.text_cache, tiny_run.text_identity, checkpoint,
                             "train", str(out_dir), SIZE)  # fmt: skip


def _arrays(path: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return {f"{n}/{a}": group[n][a][:] for n, _ in group.groups() for a in ("prob", "uncertainty")}


@pytest.fixture(scope="module")
def clean_infer(tmp_path_factory, tiny_run, checkpoint):
    out = tmp_path_factory.mktemp("infer")
    result = infer.run(_infer_inputs(tiny_run, checkpoint, out), InferSection(actors=2))
    return out, result


def test_infer_writes_every_frame_and_an_index_that_matches(tiny_run, clean_infer):
    out, result = clean_infer
    manifest = read_manifest(tiny_run.manifest_dir)
    expressions = manifest.split_expressions("train")
    store = open_store(str(out / "pseudo.zarr"), mode="r")
    index = pq.read_table(out / "index.parquet").to_pandas()
    assert len(index) == sum(len(e.all_frames) for e in expressions) == result.metrics["frames"]
    for expression in expressions:
        label = read_pseudo_label(store, expression.expression_id)
        assert label.prob.shape == (len(expression.all_frames), *SIZE)
        assert 0 <= label.prob.min() and label.prob.max() <= 1
        rows = index[index.expression_id == expression.expression_id].sort_values("frame")
        np.testing.assert_allclose(rows.mean_entropy, label.uncertainty.reshape(len(rows), -1).mean(1), rtol=1e-5)
    # uint8 probability + uncertainty: at most 1/8 of the raw float32 pair (2 x 4 bytes per pixel).
    assert result.metrics["bytes_per_frame"] <= 2 * 4 * SIZE[0] * SIZE[1] / 8


def test_infer_predictions_equal_the_core_predictor(tiny_run, checkpoint, clean_infer):
    out, _ = clean_infer
    manifest = read_manifest(tiny_run.manifest_dir)
    expression = manifest.split_expressions("train")[0]
    video = manifest.video(expression.video_id, "train")
    model = load_predictor(checkpoint, "ema", torch.device("cpu"))
    words, mask = TextCache(tiny_run.text_cache, tiny_run.text_identity).lookup([expression.text])
    direct = [p for _, p in predict_expression(model, video, expression, words[0], mask[0], SIZE,
                                               first_mask_from_gt=True, memory_frames=4)]  # fmt: skip
    stored = read_pseudo_label(open_store(str(out / "pseudo.zarr"), mode="r"), expression.expression_id)
    assert np.abs(stored.prob - np.stack(direct)).max() <= 1 / 510 + 1e-6


def test_interrupted_infer_resumes_and_ends_byte_identical(tiny_run, checkpoint, clean_infer, tmp_path, monkeypatch):
    reference, _ = clean_infer
    out = tmp_path / "infer"
    monkeypatch.setenv("PRVOS_FAULT", "infer.expression:3:raise")
    monkeypatch.setenv("PRVOS_FAULT_DIR", str(tmp_path))
    with pytest.raises(Exception, match="injected fault"):
        infer.run(_infer_inputs(tiny_run, checkpoint, out), InferSection(actors=1))
    group = zarr.open_group(str(out / "pseudo.zarr"), mode="r")
    committed = [n for n, g in group.groups() if g.attrs.get("committed")]
    assert len(committed) == 3  # the fourth expression of the actor failed before it was committed
    resumed = infer.run(_infer_inputs(tiny_run, checkpoint, out), InferSection(actors=2))
    assert resumed.metrics["skipped"] == 3
    expected, actual = _arrays(reference / "pseudo.zarr"), _arrays(out / "pseudo.zarr")
    assert expected.keys() == actual.keys()
    assert all(np.array_equal(expected[k], actual[k]) for k in expected)
    again = infer.run(_infer_inputs(tiny_run, checkpoint, out), InferSection(actors=2))
    assert again.metrics["computed"] == 0 and again.metrics["skipped"] == resumed.metrics["expressions"]


def test_refine_equals_the_core_refinement(tiny_run, clean_infer, tmp_path):
    pseudo, _ = clean_infer
    cfg = RefineConfig(percentile=30, frames_per_expression=2)
    result = refine.run(refine.RefineInputs(tiny_run.manifest_dir, str(pseudo / "pseudo.zarr"), str(tmp_path)), cfg)
    manifest = read_manifest(tiny_run.manifest_dir)
    expressions = sorted(manifest.split_expressions("train"), key=lambda e: e.expression_id)
    store = open_store(str(pseudo / "pseudo.zarr"), mode="r")
    labels = {e.expression_id: read_pseudo_label(store, e.expression_id) for e in expressions}
    histogram = ConfidenceHistogram()
    for e in expressions:
        rows = [t for t, f in enumerate(labels[e.expression_id].frame_ids) if f not in set(e.gt_frames)]
        histogram.add(labels[e.expression_id].prob[rows])
    thresholds = choose_thresholds(histogram, cfg)
    assert (result.metrics["threshold_fg"], result.metrics["threshold_bg"]) == (thresholds.fg, thresholds.bg)
    summary = RefineSummary(thresholds)
    refined_store = open_store(str(tmp_path / "refined.zarr"), mode="r")
    for e in expressions:
        label = labels[e.expression_id]
        paths = SplitPaths(tiny_run.data, "train")
        gt = {t: _small(read_object_mask(str(paths.mask_path(e.video_id, f)), e.object_id))
              for t, f in enumerate(label.frame_ids) if f in e.gt_frames}  # fmt: skip
        direct = refine_expression(label.prob, label.uncertainty, thresholds, cfg, gt)
        summary.add(direct)
        stored = read_refined(refined_store, e.expression_id)
        assert np.array_equal(stored.label, direct.label)
        assert np.abs(stored.weight - direct.weight).max() <= 1 / 510 + 1e-6
        assert stored.pseudo_frames == tuple(label.frame_ids[t] for t in direct.pseudo_frames)
    for key, value in summary.to_dict().items():
        if value is not None:
            assert result.metrics[key] == pytest.approx(value), key
    frames = pq.read_table(tmp_path / "frames.parquet").to_pandas()
    assert len(frames) == sum(len(e.all_frames) for e in expressions)
    assert set(frames.source) == {"ground_truth", "pseudo_label"}
    assert (frames[frames.source == "pseudo_label"].groupby("expression_id").kept.sum() <= 2).all()
    assert "pseudo_precision_full" in result.metrics and "teacher_precision_full" in result.metrics
    summary_file = json.loads((tmp_path / "summary.json").read_text())
    assert summary_file["kept_ratio"] == pytest.approx(result.metrics["kept_ratio"])


def _small(mask: np.ndarray) -> np.ndarray:
    from prvos_core.frames import resize_map

    return resize_map(mask, SIZE)


def test_evaluate_equals_the_core_metrics(tiny_run, checkpoint, tmp_path):
    inputs = evaluate.EvaluateInputs(tiny_run.manifest_dir, tiny_run.text_cache, tiny_run.text_identity, checkpoint,
                                     "valid", str(tmp_path), SIZE)  # fmt: skip
    result = evaluate.run(inputs, EvaluateSection(actors=2))
    manifest = read_manifest(tiny_run.manifest_dir)
    model = load_predictor(checkpoint, "student", torch.device("cpu"))
    cache = TextCache(tiny_run.text_cache, tiny_run.text_identity)
    j_values, f_values = {}, {}
    for e in manifest.split_expressions("valid"):
        video = manifest.video(e.video_id, "valid")
        words, mask = cache.lookup([e.text])
        paths = SplitPaths(tiny_run.data, "valid")
        pred, gt = [], []
        for t, prob in predict_expression(model, video, e, words[0], mask[0], SIZE, first_mask_from_gt=False,
                                          memory_frames=4):  # fmt: skip
            pred.append((upsample_prob(prob, (video.height, video.width)) > 0.5).astype(np.uint8))
            gt.append(read_object_mask(str(paths.mask_path(e.video_id, video.frame_ids[t])), e.object_id))
        scores = evaluate_expression(np.stack(gt), np.stack(pred))
        j_values[e.expression_id], f_values[e.expression_id] = scores["J"], scores["F"]
    table = pq.read_table(tmp_path / "per_expression.parquet").to_pandas().set_index("expression_id")
    for expression_id, j in j_values.items():
        assert table.loc[expression_id, "J"] == pytest.approx(j, abs=1e-9)
        assert table.loc[expression_id, "F"] == pytest.approx(f_values[expression_id], abs=1e-9)
    overall = summarize(list(j_values.values()), list(f_values.values()))
    assert result.metrics["JF"] == pytest.approx(overall["J&F"], abs=1e-9)
    assert result.metrics["P0.5"] == pytest.approx(overall["P@0.5"])


def test_a_split_without_ground_truth_gives_a_submission_zip(tiny_run, checkpoint, tmp_path):
    import io
    import zipfile

    from PIL import Image

    from prvos_core.manifest import Expression, Manifest, write_manifest

    manifest = read_manifest(tiny_run.manifest_dir)
    no_gt = tuple(Expression(**{**e.__dict__, "gt_frames": ()}) for e in manifest.expressions)
    write_manifest(str(tmp_path / "manifest"), Manifest(manifest.videos, no_gt, ()))
    inputs = evaluate.EvaluateInputs(str(tmp_path / "manifest"), tiny_run.text_cache, tiny_run.text_identity,
                                     checkpoint, "valid", str(tmp_path / "out"), SIZE)  # fmt: skip
    result = evaluate.run(inputs, EvaluateSection(actors=2))
    with zipfile.ZipFile(result.outputs["submission"]) as bundle:
        names = bundle.namelist()
        valid = [e for e in no_gt if e.split == "valid"]
        assert len(names) == sum(len(e.all_frames) for e in valid)
        e = valid[0]
        name = f"Annotations/{e.video_id}/{e.exp_key}/{e.all_frames[0]}.png"
        image = Image.open(io.BytesIO(bundle.read(name)))
        assert image.size == (48, 48) and image.mode == "L"
