"""The train stage on Ray Train: 2 DDP workers, the loss goes down, a failed worker resumes from a checkpoint;
the clip sources it trains on take the refined pseudo-labelled frames."""

from __future__ import annotations

import json

import pytest

from prvos_core.config import ModelSection, TrainSection
from prvos_core.data.clips import clip_sources
from prvos_core.data.manifest import read_manifest
from prvos_core.model.checkpoint import load_checkpoint, read_checkpoint_meta
from stages import train

MODEL = ModelSection(size="tiny", input_size=(32, 32))


def _inputs(tiny_run, out_dir, **changes) -> train.TrainInputs:
    base = dict(
        manifest_dir=tiny_run.manifest_dir,
        text_cache=tiny_run.text_cache,
        text_identity=tiny_run.text_identity,
        text_dim=tiny_run.text_dim,
        split="train",
        out_dir=str(out_dir),
        model=MODEL,
        seed=0,
    )
    return train.TrainInputs(**{**base, **changes})


def _sources(tiny_run, refined_store: str | None = None, full_annotations: bool = False):
    """What train_loop trains on: the split's clip sources."""
    manifest = read_manifest(tiny_run.manifest_dir)
    return clip_sources(manifest, "train", refined_store=refined_store, full_annotations=full_annotations)


def test_two_workers_train_and_the_loss_goes_down(tiny_run, tmp_path):
    cfg = TrainSection(workers=2, epochs=3, batch_size=2, clip_frames=2, lr=1e-3, samples_per_expression=2)
    result = train.run(_inputs(tiny_run, tmp_path / "train"), cfg)
    history = json.loads((tmp_path / "train/history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[-1]["loss"] < history[0]["loss"], history
    assert result.clips_per_second > 0
    checkpoint = load_checkpoint(result.checkpoint)
    assert checkpoint.ema is not None and checkpoint.meta["epoch"] == 2
    # 2 workers split every epoch's clips between them: all clips of an epoch are counted once.
    expressions = len(_sources(tiny_run))
    assert history[0]["clips_per_second"] * history[0]["epoch_seconds"] == pytest.approx(2 * expressions, rel=0.01)


def test_a_worker_failure_resumes_from_the_last_checkpoint(tiny_run, tmp_path, monkeypatch):
    cfg = TrainSection(workers=2, epochs=3, batch_size=2, clip_frames=2, max_failures=1)
    steps_per_epoch = -(-len(_sources(tiny_run)) // (2 * 2))
    # Fail once in the middle of epoch 1: its checkpoint is epoch 0's, so training restarts at epoch 1.
    monkeypatch.setenv("PRVOS_FAULT", f"train.step:{steps_per_epoch + steps_per_epoch // 2}:raise")
    monkeypatch.setenv("PRVOS_FAULT_DIR", str(tmp_path))
    result = train.run(_inputs(tiny_run, tmp_path / "train"), cfg)
    assert list(tmp_path.glob("fired-train.step-*")), "the fault did not fire"
    assert result.start_epoch == 1
    history = json.loads((tmp_path / "train/history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert read_checkpoint_meta(result.checkpoint)["epoch"] == 2


def test_refined_pseudo_frames_join_the_ground_truth(tiny_run, tmp_path):
    import numpy as np

    from prvos_core.pseudo.store import RefinedLabel, open_store, write_refined

    manifest = read_manifest(tiny_run.manifest_dir)
    expression = manifest.split_expressions("train")[0]
    store = open_store(str(tmp_path / "refined.zarr"))
    frames = expression.all_frames
    label = np.full((len(frames), 8, 8), 255, np.uint8)
    write_refined(store, RefinedLabel(expression.expression_id, frames, label, np.zeros(label.shape, np.float32),
                                      (frames[1], frames[2]), expression.gt_frames))  # fmt: skip
    sources = _sources(tiny_run, refined_store=str(tmp_path / "refined.zarr"))
    source = next(s for s in sources if s.expression.expression_id == expression.expression_id)
    assert source.pseudo_frames == (frames[1], frames[2])
    assert set(source.labelled) == set(expression.gt_frames) | {frames[1], frames[2]}
    full = _sources(tiny_run, full_annotations=True)
    assert all(s.gt_frames == s.video.frame_ids and s.gt_folder == "full_annotations" for s in full)
