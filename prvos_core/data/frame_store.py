"""The frame store: every frame of the manifest decoded once, at the model's working resolution, for every round.

```
<frames stage>/frames.zarr  attrs: size [H, W] (stored), inputs (digest of what the frames depend on)
<frames stage>/frames.zarr/<split>/<video_id>   (T, H, W, 3) uint8 RGB, one frame per chunk, zstd level 1
                                                attrs: frame_ids, committed
```
H x W is the model's input size divided by the smallest crop side of the training augmentation (rounded up):
a training crop of any allowed side still covers the input size, so clips are cut from stored frames without
upsampling, and inference resizes the whole stored frame to the input size. A frame is decoded as `load_frame`
decodes a JPEG at H x W (libjpeg's reduced decode where it covers the size, then an area resize), so the store
holds exactly the pixels the JPEG path gives at that size. One frame per chunk: a training clip reads a few
frames of a video, inference reads them all.

A video counts once its `committed` attribute is set, after its array is written whole: an interrupted writer
leaves nothing a reader takes as done, and the stage writes again only the videos not committed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from prvos_core import storage
from prvos_core.data.frames import FULL, Box, decode_jpeg, decode_reduction, resize_frame
from prvos_core.data.manifest import Video
from prvos_core.errors import StorageError

FRAME_STORE = "frames.zarr"
_COMPRESSORS = ZstdCodec(level=1)  # natural images gain little from higher levels; reading speed matters more


def store_size(input_size: tuple[int, int], min_crop: float) -> tuple[int, int]:
    """Stored frame size (H, W) for a model input of `input_size` and training crops of side >= `min_crop`."""
    return math.ceil(input_size[0] / min_crop), math.ceil(input_size[1] / min_crop)


def open_frame_store(uri: str, mode: str = "r") -> zarr.Group:
    """The frame store at `uri` (mode 'a' creates it); StorageError naming it when a reader finds none."""
    try:
        return zarr.open_group(uri, mode=mode, zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise StorageError(f"{uri}: no frame store here; run the frames stage first") from None


def _key(video: Video) -> str:
    return f"{video.split}/{video.video_id}"


def decode_video(video: Video, size: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Every frame of `video` at `size` -> ((T, H, W, 3) uint8 RGB, bytes of its JPEGs read), as `load_frame`
    gives them; one read per JPEG (on an object store, one GET and no size query)."""
    paths = video.paths
    reduce = decode_reduction((video.height, video.width), size)
    frames = np.empty((video.n_frames, *size, 3), np.uint8)
    jpeg_bytes = 0
    for t, frame_id in enumerate(video.frame_ids):
        uri = str(paths.frame_path(video.video_id, frame_id))
        data = storage.read_bytes(uri)
        frames[t] = resize_frame(decode_jpeg(data, uri, reduce), size).transpose(1, 2, 0)
        jpeg_bytes += len(data)
    return frames, jpeg_bytes


def write_video(store: zarr.Group, video: Video, frames: np.ndarray) -> None:
    """Store one video's frames (T, H, W, 3) uint8 and commit it (replacing whatever an interrupted writer left)."""
    if frames.shape[0] != video.n_frames or frames.dtype != np.uint8 or frames.ndim != 4:
        raise ValueError(f"{video.video_id}: expected ({video.n_frames}, H, W, 3) uint8, got {frames.shape}")
    array = store.require_group(video.split).create_array(
        video.video_id, data=frames, chunks=(1, *frames.shape[1:]), compressors=_COMPRESSORS, overwrite=True
    )
    array.attrs.update({"frame_ids": list(video.frame_ids), "committed": True})


def committed_videos(store: zarr.Group) -> set[str]:
    """'<split>/<video_id>' of every committed video."""
    done = set()
    for split, group in store.groups():
        for video_id, array in group.arrays():
            if array.attrs.get("committed"):
                done.add(f"{split}/{video_id}")
    return done


class FrameReader:
    """Reads frames of the store's videos; opened lazily (once per process that reads: a data-loader worker,
    a teacher actor)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._store: zarr.Group | None = None
        self._arrays: dict[str, zarr.Array] = {}

    def _array(self, video: Video) -> zarr.Array:
        key = _key(video)
        if key not in self._arrays:
            if self._store is None:
                self._store = open_frame_store(self.uri)
            try:
                array = self._store[key]
            except KeyError:
                array = None
            if array is None or not array.attrs.get("committed"):
                raise StorageError(f"{self.uri}: video {key} is not in the frame store; re-run the frames stage")
            if tuple(array.attrs["frame_ids"]) != tuple(video.frame_ids):
                raise StorageError(f"{self.uri}: video {key} was stored with other frames; re-run the frames stage")
            self._arrays[key] = array
        return self._arrays[key]

    def size(self, video: Video) -> tuple[int, int]:
        """Stored (H, W) of the video's frames."""
        return tuple(self._array(video).shape[1:3])

    def read(self, video: Video, indices: Sequence[int] | None = None) -> np.ndarray:
        """Frames (n, H, W, 3) uint8 RGB at the given positions of `video.frame_ids` (all when None)."""
        array = self._array(video)
        if indices is None:
            return array[:]
        return np.stack([array[int(t)] for t in indices]) if len(indices) else np.empty((0, *array.shape[1:]), np.uint8)

    def frame(self, video: Video, index: int, size: tuple[int, int], box: Box = FULL) -> np.ndarray:
        """One frame cropped to `box` and resized to `size` -> (3, h, w) uint8, as `load_frame` gives from a JPEG."""
        return resize_frame(self._array(video)[int(index)], size, box)
