"""The frames stage: every frame of the manifest decoded once into the frame store with the pixels the JPEG path
gives at that size, resumed video by video, and read by train, infer and evaluate without any JPEG left on disk."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import zarr

from prvos_core.config import EvaluateSection, FramesSection, InferSection, IngestSection, ModelSection, TrainSection
from prvos_core.data.frame_store import FrameReader, store_size
from prvos_core.data.frames import FULL, load_frame
from prvos_core.data.manifest import read_manifest
from prvos_core.errors import StorageError, UserError
from stages import evaluate, frames, infer, ingest, train

SIZE = (32, 32)
MIN_CROP = 0.8


@pytest.fixture
def copied_run(tiny_run, tmp_path):
    """The tiny dataset copied (its JPEGs may be taken away) and ingested: (data root, manifest folder)."""
    shutil.copytree(tiny_run.data, tmp_path / "data")
    manifest_dir = tmp_path / "ingest"
    manifest_dir.mkdir()
    ingest.run(ingest.IngestInputs(str(tmp_path / "data"), ("train", "valid"), str(manifest_dir)), IngestSection())
    return tmp_path / "data", str(manifest_dir)


def _frames(manifest_dir: str, out) -> frames.FramesResult:
    return frames.run(frames.FramesInputs(manifest_dir, str(out), SIZE, MIN_CROP), FramesSection())


def test_the_store_holds_every_frame_as_the_jpeg_decodes_at_that_size_and_resumes_by_video(copied_run, tmp_path):
    _, manifest_dir = copied_run
    result = _frames(manifest_dir, tmp_path / "frames")
    videos = read_manifest(manifest_dir).videos
    assert (result.height, result.width) == store_size(SIZE, MIN_CROP) == (40, 40)
    assert result.videos == result.computed == len(videos) and result.frames == sum(v.n_frames for v in videos)
    assert result.jpeg_bytes_per_frame > 0 and 0 < result.bytes_per_frame < 40 * 40 * 3
    reader = FrameReader(result.store)
    for video in videos:
        stored = reader.read(video)
        paths = video.paths
        decoded = np.stack([load_frame(str(paths.frame_path(video.video_id, f)), (40, 40), FULL,
                                       (video.height, video.width)).transpose(1, 2, 0) for f in video.frame_ids])  # fmt: skip
        assert stored.dtype == np.uint8 and stored.shape == decoded.shape
        assert np.abs(stored.astype(int) - decoded).max() <= 1  # the same pixels (within 1 grey level)

    # An interrupted run: one video never committed, another never started. Only those two are decoded again.
    store = zarr.open_group(result.store, mode="r+")
    first, second = videos[0], videos[1]
    store[f"{first.split}/{first.video_id}"].attrs["committed"] = False
    del store[f"{second.split}/{second.video_id}"]
    again = _frames(manifest_dir, tmp_path / "frames")
    assert again.computed == 2 and again.skipped == len(videos) - 2
    np.testing.assert_array_equal(FrameReader(again.store).read(first), reader.read(first))


def test_a_committed_frame_store_is_all_train_infer_and_evaluate_read(copied_run, tmp_path, tiny_run):
    data, manifest_dir = copied_run
    store = _frames(manifest_dir, tmp_path / "frames").store
    for folder in data.glob("*/JPEGImages"):
        shutil.rmtree(folder)  # no JPEG left to decode

    model = ModelSection(size="tiny", input_size=SIZE, pretrained=False)
    train_inputs = train.TrainInputs(manifest_dir, tiny_run.text_cache, tiny_run.text_identity, tiny_run.text_dim,
                                     "train", str(tmp_path / "train"), model, frame_store=store)  # fmt: skip
    trained = train.run(train_inputs, TrainSection(workers=1, epochs=1, batch_size=2, clip_frames=2, min_crop=MIN_CROP))
    assert trained.step > 0

    def model_inputs(split, out, frame_store=store):
        return infer.InferInputs(manifest_dir, tiny_run.text_cache, tiny_run.text_identity, trained.checkpoint, split,
                                 str(tmp_path / out), SIZE, frame_store=frame_store)  # fmt: skip

    labelled = infer.run(model_inputs("train", "infer"), InferSection(actors=1))
    assert labelled.frames == sum(len(e.all_frames) for e in read_manifest(manifest_dir).split_expressions("train"))
    scored = evaluate.run(model_inputs("valid", "evaluate"), EvaluateSection(actors=1))
    assert 0 <= scored.scores["JF"] <= 1 and scored.frames > 0
    # Without the store the same stage needs the JPEGs: the run above did not decode any.
    with pytest.raises(UserError, match="JPEGImages"):
        infer.run(model_inputs("train", "infer-jpeg", None), InferSection(actors=1))


def test_a_video_missing_from_the_store_or_stored_with_other_frames_is_one_line(copied_run, tmp_path):
    _, manifest_dir = copied_run
    store = _frames(manifest_dir, tmp_path / "frames").store
    first, second = read_manifest(manifest_dir).videos[:2]
    zarr.open_group(store, mode="r+")[f"{first.split}/{first.video_id}"].attrs["committed"] = False
    with pytest.raises(StorageError, match="is not in the frame store; re-run the frames stage"):
        FrameReader(store).read(first)
    shorter = replace(second, frame_ids=second.frame_ids[:-1])
    with pytest.raises(StorageError, match="was stored with other frames; re-run the frames stage"):
        FrameReader(store).read(shorter)
