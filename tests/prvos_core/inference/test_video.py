"""`prvos predict`: masks and an overlay video from a real clip's frames and from an MP4; user errors in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from prvos_core.errors import UserError
from prvos_core.inference.video import OVERLAY_FILE, SUMMARY_FILE, predict_video
from prvos_core.inference.video_io import open_video
from prvos_core.model.builders import build_model
from prvos_core.model.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[3]
CLIP = "ref_davis16_mini/train/JPEGImages/blackswan"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny model at 32x32 (random weights: what it finds does not matter here, what it writes does)."""
    import torch

    torch.manual_seed(0)
    model = build_model("tiny", text_dim=384, pretrained=False)
    meta = {"epoch": 0, "step": 0, "round": 0, "config": {"model": {"input_size": [32, 32]}}}
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint", model, meta=meta)


def _check_outputs(out: Path, frame_ids: list[str], size: tuple[int, int]) -> None:
    masks = sorted((out / "masks").glob("*.png"))
    assert [m.stem for m in masks] == frame_ids
    for path in masks:
        with Image.open(path) as image:
            assert image.mode == "P" and image.size == (size[1], size[0])
            assert set(np.unique(np.asarray(image)).tolist()) <= {0, 1}
    video = cv2.VideoCapture(str(out / OVERLAY_FILE))
    frames = 0
    while True:
        ok, frame = video.read()
        if not ok:
            break
        assert frame.shape == (*size, 3) and frame.std() > 5  # a picture, not a blank
        frames += 1
    video.release()
    assert frames == len(frame_ids)
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["frames"] == len(frame_ids) and (summary["height"], summary["width"]) == size


def test_predict_on_a_real_clip(checkpoint, shared_data, tmp_path, one_torch_thread):
    folder = shared_data / CLIP
    frame_ids = sorted(p.stem for p in folder.glob("*.jpg"))
    result = predict_video(checkpoint, folder, "a black feathered swan", tmp_path / "out")
    assert result.frames == len(frame_ids) == 25 and (result.height, result.width) == (480, 854)
    _check_outputs(tmp_path / "out", frame_ids, (480, 854))
    # Again into the same folder: the earlier prediction is replaced whole, nothing else is left beside it.
    predict_video(checkpoint, folder, "a black feathered swan", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_predict_command_on_an_mp4(checkpoint, shared_data, tmp_path):
    frames = sorted((shared_data / CLIP).glob("*.jpg"))[:10]
    video_path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (160, 96))
    for frame in frames:
        writer.write(cv2.resize(cv2.imread(str(frame)), (160, 96), interpolation=cv2.INTER_AREA))
    writer.release()
    assert open_video(video_path).n_frames == 10

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pipelines.cli", "predict", "--checkpoint", str(checkpoint), "--video",
               str(video_path), "--text", "a black swan", "--out", str(tmp_path / "out")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "predict" in result.stderr and "10/10" in result.stderr  # the progress bar
    assert "wrote 10 masks" in result.stdout
    _check_outputs(tmp_path / "out", [f"{i:05d}" for i in range(10)], (96, 160))
    assert json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())["fps"] == pytest.approx(12.0)


def test_user_errors_are_one_line(checkpoint, shared_data, tmp_path):
    folder = shared_data / CLIP
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    (tmp_path / "empty").mkdir()
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("keep me")
    cases = [
        (dict(checkpoint=tmp_path / "nope", video=folder, text="a swan", out=tmp_path / "o"), "no such checkpoint"),
        (dict(checkpoint=checkpoint, video=folder, text="  ", out=tmp_path / "o"), "--text is empty"),
        (dict(checkpoint=checkpoint, video=tmp_path / "broken.mp4", text="a", out=tmp_path / "o"), "cannot open"),
        (dict(checkpoint=checkpoint, video=tmp_path / "missing.mp4", text="a", out=tmp_path / "o"), "no such file"),
        (dict(checkpoint=checkpoint, video=tmp_path / "empty", text="a", out=tmp_path / "o"), "no frames"),
        (dict(checkpoint=checkpoint, video=folder, text="a", out=tmp_path / "theirs"), "not an earlier"),
        (dict(checkpoint=checkpoint, video=folder, text="a", out=tmp_path / "o", threads=0), "--threads"),
    ]
    for kwargs, fragment in cases:
        with pytest.raises(UserError) as raised:
            predict_video(**kwargs)
        message = str(raised.value)
        assert fragment in message and "\n" not in message, message
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "o").exists()
