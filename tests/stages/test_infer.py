"""Tests of stages.infer on the tiny synthetic run: every frame stored in range with an index that matches the
store, every ground-truth frame stored as itself, predictions equal to prvos_core.inference.predict, resume after
an interruption to byte-identical files, an actor killed mid-pool replaced with the same bytes, the shared-frame pool (a video's expressions together) writing the same
bytes as one expression at a time, a finished infer re-run without model work, a store of other inputs or
settings (anchors, flip uncertainty) started afresh, and the uint8 size bound."""

from __future__ import annotations

import functools
import shutil
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch
import zarr
from PIL import Image

from prvos_core.config import InferSection
from prvos_core.data.manifest import Manifest, read_manifest, write_manifest
from prvos_core.errors import CheckpointError, DataError, StorageError
from prvos_core.inference.matching import Matching
from prvos_core.inference.predict import load_predictor, names_a_side, predict_expression, predictor_identity
from prvos_core.model.builders import build_model
from prvos_core.model.checkpoint import save_checkpoint
from prvos_core.model.ema import EmaTeacher
from prvos_core.pseudo.store import open_store, quantize_unit, read_index, read_pseudo_label
from prvos_core.pseudo.uncertainty import binary_entropy
from prvos_core.text.cache import TextCache
from stages import infer

SIZE = (32, 32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_run) -> str:
    """A seeded random tiny student and an EMA teacher that differs from it by 10% weight noise and whose logits
    are sharpened x64: like a trained teacher it is sure of most pixels (~7% have 0.05 < p < 0.95), which
    is what the store's size bound is about; a random network's lukewarm maps do not compress like that."""
    torch.manual_seed(3)
    model = build_model("tiny", text_dim=tiny_run.text_dim, pretrained=False)
    ema = EmaTeacher(model, decay=0.5)
    noise = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in ema.model.parameters():
            parameter.mul_(1 + 0.1 * torch.randn(parameter.shape, generator=noise))
        ema.model.decoder.predict.weight.mul_(64)
        ema.model.decoder.predict.bias.mul_(64)
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    return str(save_checkpoint(folder, model, ema=ema, meta={"epoch": 0, "step": 0, "round": 0}))


def _inputs(tiny_run, checkpoint, out_dir, manifest_dir=None) -> infer.InferInputs:
    return infer.InferInputs(manifest_dir or tiny_run.manifest_dir, tiny_run.text_cache, tiny_run.text_identity,
                             checkpoint, "train", str(out_dir), SIZE)  # fmt: skip


@pytest.fixture(scope="module")
def clean(tmp_path_factory, tiny_run, checkpoint):
    """An uninterrupted infer with two actors: (its folder, its result)."""
    out = tmp_path_factory.mktemp("clean")
    return out, infer.run(_inputs(tiny_run, checkpoint, out), InferSection(actors=2))


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by relative path: chunks and Zarr metadata."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_frame_is_stored_in_range_and_the_index_matches_the_store(tiny_run, checkpoint, clean):
    out, result = clean
    expressions = read_manifest(tiny_run.manifest_dir).split_expressions("train")
    store = open_store(str(out / "pseudo.zarr"), mode="r")
    index = read_index(str(out / "index.parquet")).to_pandas()
    total = sum(len(e.all_frames) for e in expressions)
    assert len(index) == total == result.frames and len(expressions) == result.expressions
    assert result.skipped == 0 and result.computed == len(expressions)
    assert set(index.status) == {"committed"}
    anchored = 0
    for expression in expressions:
        label = read_pseudo_label(store, expression.expression_id)
        assert label.frame_ids == expression.all_frames
        assert label.prob.shape == label.uncertainty.shape == (len(expression.all_frames), *SIZE)
        assert 0 <= label.prob.min() and label.prob.max() <= 1
        assert 0 <= label.uncertainty.min() and label.uncertainty.max() <= 1
        # The uncertainty is the binary entropy of the probability (each quantised on its own: |dH/dp| <= 4.25
        # for p in [0.05, 0.95], so the two roundings of 1/510 allow at most 5.25 / 510).
        middle = (label.prob >= 0.05) & (label.prob <= 0.95)
        assert middle.mean() > 0.01
        assert np.abs(label.uncertainty - binary_entropy(label.prob))[middle].max() <= 5.25 / 510
        rows = index[index.expression_id == expression.expression_id].sort_values("frame")
        assert tuple(rows.frame) == expression.all_frames and set(rows.teacher) == {label.teacher}
        for t in range(len(rows)):
            assert rows.mean_entropy.iloc[t] == np.float32(label.uncertainty[t].mean(dtype=np.float64))
            assert rows.fg_fraction.iloc[t] == np.float32((label.prob[t] > 0.5).mean())
        # anchors "all": every ground-truth frame is its mask itself, so it is certain.
        for frame in expression.gt_frames:
            t = expression.all_frames.index(frame)
            mask_file = tiny_run.data / "train/Annotations" / expression.video_id / f"{frame}.png"
            mask = (np.array(Image.open(mask_file)) == int(expression.object_id)).astype(np.uint8)
            small = cv2.resize(mask, SIZE[::-1], interpolation=cv2.INTER_NEAREST).astype(np.float32)
            np.testing.assert_array_equal(label.prob[t], small)
            assert label.uncertainty[t].max() == 0
        anchored += any(frame != expression.all_frames[0] for frame in expression.gt_frames)
    assert anchored > 0
    assert set(index.teacher) == {predictor_identity(checkpoint, "ema")}


def test_the_uint8_store_is_at_most_an_eighth_of_raw_float32(tiny_run, checkpoint, clean, tmp_path):
    """The model's own maps (no matching) compress to 1/8 of two float32 maps. The default teacher blends in
    label propagation (`match_weight` 0.7), whose maps are upsampled from a 1/4-resolution grid: smooth ramps
    that zstd shrinks less (1/6.2 here at 32 x 32; 1/10.6 and 1/14 on the demo's 64 x 64 rounds, 1/7.1 on the
    real clips at 64 x 112), still well under the uint8 arrays' 1/4."""
    raw_float32_pair = 2 * 4 * SIZE[0] * SIZE[1]
    out, result = clean
    on_disk = sum(p.stat().st_size for p in (out / "pseudo.zarr").rglob("*") if p.is_file())
    assert result.store_bytes == on_disk
    assert result.bytes_per_frame == on_disk / result.frames
    assert result.bytes_per_frame <= raw_float32_pair / 5
    alone = infer.run(_inputs(tiny_run, checkpoint, tmp_path / "infer"), InferSection(actors=1, match_weight=0.0))
    assert alone.bytes_per_frame <= raw_float32_pair / 8


def test_stored_labels_are_the_core_predictor_quantised(tiny_run, checkpoint, clean, one_torch_thread):
    out, _ = clean
    manifest = read_manifest(tiny_run.manifest_dir)
    model = load_predictor(checkpoint, "ema", torch.device("cpu"))
    cache = TextCache(tiny_run.text_cache, tiny_run.text_identity)
    store = open_store(str(out / "pseudo.zarr"), mode="r")
    cfg = InferSection()
    for expression in manifest.split_expressions("train")[:3]:
        words, mask = cache.lookup([expression.text])
        direct = [prob for _, prob in predict_expression(
            model, manifest.video(expression.video_id, "train"), expression, words[0], mask[0], SIZE,
            first_mask_from_gt=cfg.first_frame_gt, memory_frames=cfg.memory_frames, anchors=cfg.anchors,
            matching=Matching(cfg.match_weight, cfg.match_temperature, cfg.match_top_k))]  # fmt: skip
        stored = zarr.open_group(str(out / "pseudo.zarr" / expression.expression_id), mode="r")
        # One torch thread here and in the actors: the same float results, so the same uint8 codes.
        np.testing.assert_array_equal(stored["prob"][:], quantize_unit(np.stack(direct)))
        np.testing.assert_array_equal(stored["uncertainty"][:], quantize_unit(binary_entropy(np.stack(direct))))
        assert read_pseudo_label(store, expression.expression_id).teacher == predictor_identity(checkpoint, "ema")


def test_an_interrupted_infer_resumes_to_the_same_bytes(tiny_run, checkpoint, clean, tmp_path):
    reference, _ = clean
    out = tmp_path / "infer"
    shutil.copytree(reference, out)
    (out / "index.parquet").unlink()
    store = zarr.open_group(str(out / "pseudo.zarr"), mode="r+")
    names = sorted(name for name, _ in store.groups())
    # One writer stopped mid-expression: not committed, a frame holding garbage and a chunk never written ...
    stopped = store[names[1]]
    stopped.attrs["committed"] = False
    stopped["prob"][2] = np.full(SIZE, 7, np.uint8)
    chunk = out / "pseudo.zarr" / names[1] / "uncertainty" / "c" / "0" / "0" / "0"
    assert chunk.is_file()
    chunk.unlink()
    # ... and one expression never started.
    shutil.rmtree(out / "pseudo.zarr" / names[4])
    untouched = (out / "pseudo.zarr" / names[0] / "prob" / "c" / "0" / "0" / "0").stat().st_mtime_ns

    # One actor where the clean run had two: the stored bytes do not depend on the pool.
    resumed = infer.run(_inputs(tiny_run, checkpoint, out), InferSection(actors=1))
    assert resumed.computed == 2 and resumed.skipped == len(names) - 2
    assert _files(out / "pseudo.zarr") == _files(reference / "pseudo.zarr")
    assert pq.read_table(out / "index.parquet").equals(pq.read_table(reference / "index.parquet"))
    assert (out / "pseudo.zarr" / names[0] / "prob" / "c" / "0" / "0" / "0").stat().st_mtime_ns == untouched


def test_the_shared_frame_teacher_writes_the_same_store_as_one_expression_at_a_time(
    tiny_run, checkpoint, clean, tmp_path
):
    reference, _ = clean  # share_frames (the default): an actor labels a video's expressions together
    expressions = read_manifest(tiny_run.manifest_dir).split_expressions("train")
    per_video = Counter(e.video_id for e in expressions)
    assert max(per_video.values()) >= 2  # some video's frames are shared
    alone = infer.run(_inputs(tiny_run, checkpoint, tmp_path / "infer"), InferSection(actors=2, share_frames=False))
    assert alone.computed == len(expressions)
    assert _files(tmp_path / "infer" / "pseudo.zarr") == _files(reference / "pseudo.zarr")
    assert pq.read_table(tmp_path / "infer" / "index.parquet").equals(pq.read_table(reference / "index.parquet"))


def test_an_actor_killed_mid_pool_is_replaced_and_the_store_is_the_same(
    tiny_run, checkpoint, clean, tmp_path, monkeypatch, capfd
):
    """The second call of an actor SIGKILLs its process: a new pool takes what had not come back, and the store
    is byte-identical to the uninterrupted one. Ray prints no core-worker line about the actor's constructor
    arguments (Ray Data's own actor restarts, which would pin them in the object store, are off)."""
    reference, _ = clean
    monkeypatch.setenv("PRVOS_FAULT", "infer.expression:1:kill")
    monkeypatch.setenv("PRVOS_FAULT_DIR", str(tmp_path))
    capfd.readouterr()
    result = infer.run(_inputs(tiny_run, checkpoint, tmp_path / "infer"), InferSection(actors=2))
    console = capfd.readouterr().err
    assert (tmp_path / "fired-infer.expression-1").exists()
    assert "an actor died" in console and "a new pool takes the" in console and "(restart 1/3)" in console
    assert "constructor arguments" not in console
    assert result.expressions == len(read_manifest(tiny_run.manifest_dir).split_expressions("train"))
    assert _files(tmp_path / "infer" / "pseudo.zarr") == _files(reference / "pseudo.zarr")
    assert pq.read_table(tmp_path / "infer" / "index.parquet").equals(pq.read_table(reference / "index.parquet"))


def test_a_finished_infer_runs_again_without_model_work(tiny_run, checkpoint, clean, tmp_path):
    reference, first = clean
    out = tmp_path / "infer"
    shutil.copytree(reference, out)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "pseudo.zarr").rglob("*") if p.is_file()}
    again = infer.run(_inputs(tiny_run, checkpoint, out), InferSection(actors=2))
    assert again.computed == 0 and again.skipped == first.expressions
    assert again.frames_per_second == 0.0 and again.frames == first.frames
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert pq.read_table(out / "index.parquet").equals(pq.read_table(reference / "index.parquet"))


def test_a_store_left_by_other_inputs_starts_afresh(tiny_run, checkpoint, clean, tmp_path):
    reference, _ = clean
    out = tmp_path / "infer"
    shutil.copytree(reference, out)
    # Other inputs: a manifest with three of the expressions, and float16 labels.
    manifest = read_manifest(tiny_run.manifest_dir)
    kept = manifest.split_expressions("train")[:3]
    write_manifest(str(tmp_path / "manifest"), Manifest(manifest.videos, tuple(kept), ()))
    inputs = _inputs(tiny_run, checkpoint, out, manifest_dir=str(tmp_path / "manifest"))
    result = infer.run(inputs, InferSection(actors=1, encoding="float16"))
    assert result.skipped == 0 and result.computed == 3
    store = zarr.open_group(str(out / "pseudo.zarr"), mode="r")
    assert sorted(name for name, _ in store.groups()) == sorted(e.expression_id for e in kept)
    old = open_store(str(reference / "pseudo.zarr"), mode="r")
    for expression in kept:
        assert store[expression.expression_id]["prob"].dtype == np.float16
        fresh = read_pseudo_label(store, expression.expression_id)
        # Same teacher, other precision: within the uint8 step plus float16 rounding.
        before = read_pseudo_label(old, expression.expression_id)
        assert np.abs(fresh.prob - before.prob).max() <= 1 / 510 + 2**-11
    assert len(pq.read_table(out / "index.parquet")) == sum(len(e.all_frames) for e in kept)


def test_the_store_digest_names_the_anchors_and_the_uncertainty(tiny_run, checkpoint, tmp_path):
    manifest = read_manifest(tiny_run.manifest_dir)
    expressions = manifest.split_expressions("train")
    videos = {e.expression_id: manifest.video_of(e) for e in expressions}
    inputs = _inputs(tiny_run, checkpoint, tmp_path)

    def digest(cfg: InferSection, videos=videos) -> str:
        return infer._inputs_digest(inputs, cfg, "teacher", expressions, videos)

    digests = {digest(InferSection(anchors=a, uncertainty=u)) for a in ("all", "first") for u in ("entropy", "flip")}
    assert len(digests) == 4
    assert digest(InferSection(actors=3, threads_per_actor=2)) == digest(InferSection())  # resources are not inputs
    unlabelled = {key: replace(video, labelled=False) for key, video in videos.items()}
    assert digest(InferSection(), unlabelled) != digest(InferSection())
    matched = {digest(InferSection(match_weight=w, match_temperature=t)) for w in (0.0, 0.7) for t in (0.02, 0.05)}
    assert len(matched) == 4 and digest(InferSection()) in matched


def test_a_matching_teacher_stores_the_predictor_with_label_propagation(tiny_run, checkpoint, tmp_path,
                                                                        one_torch_thread):  # fmt: skip
    manifest = read_manifest(tiny_run.manifest_dir)
    expression = manifest.split_expressions("train")[0]
    write_manifest(str(tmp_path / "manifest"), Manifest(manifest.videos, (expression,), ()))
    cfg = InferSection(actors=1, match_weight=0.7)
    out = tmp_path / "infer"
    infer.run(_inputs(tiny_run, checkpoint, out, manifest_dir=str(tmp_path / "manifest")), cfg)
    model = load_predictor(checkpoint, "ema", torch.device("cpu"))
    words, mask = TextCache(tiny_run.text_cache, tiny_run.text_identity).lookup([expression.text])
    label = functools.partial(predict_expression, model, manifest.video_of(expression), expression, words[0], mask[0],
                              SIZE, first_mask_from_gt=True, memory_frames=cfg.memory_frames, anchors=cfg.anchors)  # fmt: skip
    direct = np.stack([prob for _, prob in label(matching=Matching(0.7, cfg.match_temperature, cfg.match_top_k))])
    stored = zarr.open_group(str(out / "pseudo.zarr" / expression.expression_id), mode="r")
    np.testing.assert_array_equal(stored["prob"][:], quantize_unit(direct))
    assert not np.array_equal(stored["prob"][:], quantize_unit(np.stack([prob for _, prob in label()])))


def test_flip_uncertainty_starts_afresh_and_stores_the_flip_averaged_teacher(tiny_run, checkpoint, clean, tmp_path,
                                                                             one_torch_thread):  # fmt: skip
    reference, _ = clean
    out = tmp_path / "infer"
    shutil.copytree(reference, out)
    manifest = read_manifest(tiny_run.manifest_dir)
    expressions = manifest.split_expressions("train")
    # One expression that names a side (it keeps the plain teacher) and one that does not.
    sided = [e for e in expressions if names_a_side(e.text)]
    kept = sided[:1] + [e for e in expressions if e not in sided][:1]
    assert len(kept) == 2
    write_manifest(str(tmp_path / "manifest"), Manifest(manifest.videos, tuple(kept), ()))
    cfg = InferSection(actors=1, uncertainty="flip")
    result = infer.run(_inputs(tiny_run, checkpoint, out, manifest_dir=str(tmp_path / "manifest")), cfg)
    assert result.skipped == 0 and result.computed == len(kept)  # the entropy run's labels are not reused
    model = load_predictor(checkpoint, "ema", torch.device("cpu"))
    cache = TextCache(tiny_run.text_cache, tiny_run.text_identity)
    old = open_store(str(reference / "pseudo.zarr"), mode="r")
    for expression in kept:
        words, mask = cache.lookup([expression.text])
        direct = np.stack([prob for _, prob in predict_expression(
            model, manifest.video_of(expression), expression, words[0], mask[0], SIZE, first_mask_from_gt=True,
            memory_frames=cfg.memory_frames, anchors=cfg.anchors, flip=True,
            matching=Matching(cfg.match_weight, cfg.match_temperature, cfg.match_top_k))])  # fmt: skip
        stored = zarr.open_group(str(out / "pseudo.zarr" / expression.expression_id), mode="r")
        np.testing.assert_array_equal(stored["prob"][:], quantize_unit(direct))
        np.testing.assert_array_equal(stored["uncertainty"][:], quantize_unit(binary_entropy(direct)))
        plain = old[expression.expression_id]["prob"][:]
        assert np.array_equal(stored["prob"][:], plain) == names_a_side(expression.text)


def test_problems_a_user_can_fix_are_one_line_errors(tiny_run, checkpoint, tmp_path):
    manifest = read_manifest(tiny_run.manifest_dir)
    expression = manifest.split_expressions("train")[0]
    video = manifest.video(expression.video_id, "train")

    def inputs_for(expressions, videos, name: str) -> infer.InferInputs:
        write_manifest(str(tmp_path / name), Manifest(tuple(videos), tuple(expressions), ()))
        return _inputs(tiny_run, checkpoint, tmp_path / f"{name}-out", manifest_dir=str(tmp_path / name))

    with pytest.raises(CheckpointError, match="checkpoint.json not found"):
        infer.run(replace(inputs_for([expression], [video], "ok"), checkpoint=str(tmp_path)), InferSection())
    uncached = replace(expression, text="a text the cache never saw")
    with pytest.raises(DataError, match="'a text the cache never saw' is not in the text cache"):
        infer.run(inputs_for([uncached], [video], "uncached"), InferSection())
    # A frame deleted after ingest: the actor's StorageError reaches the caller as itself, not wrapped.
    shutil.copytree(tiny_run.data, tmp_path / "data")
    (tmp_path / "data" / "train" / "JPEGImages" / video.video_id / f"{video.frame_ids[3]}.jpg").unlink()
    moved = replace(video, dataset_root=str(tmp_path / "data"))
    with pytest.raises(StorageError) as raised:
        infer.run(inputs_for([expression], [moved], "frame-gone"), InferSection(actors=1))
    assert type(raised.value) is StorageError and str(raised.value).endswith(f"{video.frame_ids[3]}.jpg: not found")
    store = zarr.open_group(str(tmp_path / "frame-gone-out" / "pseudo.zarr"), mode="r")
    assert store[expression.expression_id].attrs["committed"] is False
    # The failed pool's actor gives its CPU back (it used to hold it until garbage collection, and the next
    # stage's Ray Train workers waited for it forever).
    deadline = time.time() + 15
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.time() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]
