"""A user's video for `prvos predict`: a folder of frames or an MP4 file in, an MP4 file out.

A folder is read in file-name order (`*.jpg`, `*.jpeg`, `*.png`; frame id = file stem, as in the dataset
layout); an MP4 is decoded with OpenCV (frame ids 00000, 00001, ...). Frames come out one at a time as RGB
(H, W, 3) uint8, so a long video never sits in memory. The writer uses the `mp4v` codec, the one OpenCV's
wheels can encode everywhere (H.264 needs a codec they do not ship).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from prvos_core.errors import DataError, StorageError

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
DEFAULT_FPS = 10.0  # for a folder of frames, which carries no frame rate


@dataclass(frozen=True)
class VideoSource:
    """A readable video: where it is, its frame ids in order, frame size and rate (None for a folder)."""

    path: Path
    kind: Literal["folder", "mp4"]
    frame_ids: tuple[str, ...]
    height: int
    width: int
    fps: float | None

    @property
    def n_frames(self) -> int:
        return len(self.frame_ids)

    def frames(self) -> Iterator[np.ndarray]:
        """Every frame in order as RGB (H, W, 3) uint8; DataError naming the frame if one does not decode or
        differs in size from the first."""
        if self.kind == "folder":
            files = _frame_files(self.path)
            for frame_id, file in zip(self.frame_ids, files, strict=True):
                yield self._checked(frame_id, _read_image(file))
            return
        capture = cv2.VideoCapture(str(self.path))
        try:
            for frame_id in self.frame_ids:
                ok, image = capture.read()
                if not ok:
                    raise DataError(f"{self.path}: frame {frame_id} does not decode; re-encode the video")
                yield self._checked(frame_id, cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        finally:
            capture.release()

    def _checked(self, frame_id: str, image: np.ndarray) -> np.ndarray:
        if image.shape[:2] != (self.height, self.width):
            raise DataError(
                f"{self.path}: frame {frame_id} is {image.shape[1]}x{image.shape[0]}, the first frame "
                f"{self.width}x{self.height}; give frames of one size"
            )
        return image


def open_video(path: str | Path) -> VideoSource:
    """A folder of frames or a video file (MP4 and whatever else OpenCV decodes); DataError in one line when
    it is missing, empty or unreadable."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = _frame_files(path)
        if not files:
            raise DataError(
                f"{path}: no frames (*.jpg, *.jpeg, *.png) in this folder; give a folder of frames or an MP4"
            )
        first = _read_image(files[0])
        return VideoSource(path, "folder", tuple(f.stem for f in files), first.shape[0], first.shape[1], None)
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder; give a folder of frames or an MP4 file")
    # FFmpeg would print its own complaint about a broken file above our one-line error; quiet it (-8).
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise DataError(f"{path}: OpenCV cannot open this video; give an MP4 (mp4v/H.264) or a folder of frames")
        ok, first = capture.read()
        if not ok or first is None:
            raise DataError(f"{path}: no frame decodes from this video; re-encode it or give a folder of frames")
        count = 1
        # Counting by grabbing: the container's frame count is an estimate that some encoders get wrong.
        while capture.grab():
            count += 1
        fps = capture.get(cv2.CAP_PROP_FPS)
    finally:
        capture.release()
    frame_ids = tuple(f"{index:05d}" for index in range(count))
    return VideoSource(path, "mp4", frame_ids, first.shape[0], first.shape[1], fps if fps and fps > 0 else None)


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES)


def _read_image(file: Path) -> np.ndarray:
    image = cv2.imread(str(file), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{file}: cannot decode this frame; replace or remove it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class Mp4Writer:
    """Writes RGB frames of one size into an MP4 (`mp4v`); use as a context manager."""

    def __init__(self, path: str | Path, size: tuple[int, int], fps: float) -> None:
        self.path, self.size = Path(path), size
        self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (size[1], size[0]))
        if not self.writer.isOpened():
            raise StorageError(f"{self.path}: OpenCV cannot write an MP4 here; check the folder and free space")
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB (H, W, 3) uint8 frame of the writer's size."""
        if frame.shape != (*self.size, 3):
            raise ValueError(f"frame is {frame.shape}, the video is {(*self.size, 3)}")
        self.writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.writer.release()
