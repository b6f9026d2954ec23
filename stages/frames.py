"""Frames: decode every frame of the manifest once, at the model's working resolution, into the frame store.

Every round's train, infer and evaluate then read frames from `frames.zarr` (prvos_core.data.frame_store) instead
of decoding a JPEG per frame per clip per epoch per round. One Ray task per video (decode, resize, write, commit),
as many in flight as the cluster has CPUs (`frames.workers`); the store lives beside the stage's marker, so on a
cluster it is on the run's shared storage like every other stage output.

Resume: committed videos are skipped, an uncommitted one is written again whole. A store written for another
size or other videos (digest in its attributes) is started afresh, never mixed in.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import ClassVar

import ray

from prvos_core import storage
from prvos_core.config import FramesSection
from prvos_core.data.frame_store import (
    FRAME_STORE,
    committed_videos,
    decode_video,
    open_frame_store,
    store_size,
    write_video,
)
from prvos_core.data.manifest import Video, read_manifest
from stages._ray import gather
from stages.result import StageResult, output


@dataclass(frozen=True)
class FramesInputs:
    manifest_dir: str
    out_dir: str
    input_size: tuple[int, int]  # the model's (height, width)
    min_crop: float  # the training augmentation's smallest crop side: the store keeps the margin it needs


@dataclass(frozen=True, kw_only=True)
class FramesResult(StageResult):
    stage: ClassVar[str] = "frames"
    store: str = output()  # the frame store, <dir>/frames.zarr
    height: int  # stored frame size
    width: int
    videos: int
    frames: int
    computed: int  # videos decoded by this run
    skipped: int  # videos committed by an earlier, interrupted run
    jpeg_bytes_per_frame: float  # of the frames decoded by this run (0 when none)
    bytes_per_frame: float  # on disk, in the store
    frames_per_second: float  # decoded and written, over the pool (0 when nothing was computed)
    seconds: float


def run(inputs: FramesInputs, cfg: FramesSection) -> FramesResult:
    started = time.perf_counter()
    videos = sorted(read_manifest(inputs.manifest_dir).videos, key=lambda v: (v.split, v.video_id))
    size = store_size(inputs.input_size, inputs.min_crop)
    uri = storage.join(inputs.out_dir, FRAME_STORE)
    store = storage.store_for_inputs(uri, _digest(videos, size), _open_for_writing, "frames: frames")
    for split in sorted({video.split for video in videos}):
        store.require_group(split)  # here, not by racing tasks
    done = committed_videos(store)
    todo = [video for video in videos if f"{video.split}/{video.video_id}" not in done]
    in_flight = cfg.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    pool_started = time.perf_counter()
    tasks = (_decode_and_write.remote(uri, video, size) for video in todo)
    jpeg_bytes = sum(gather(tasks, [v.n_frames for v in todo], "frames", unit="frame", in_flight=in_flight))
    pool_seconds = time.perf_counter() - pool_started
    computed = sum(video.n_frames for video in todo)
    total = sum(video.n_frames for video in videos)
    return FramesResult(
        store=uri,
        height=size[0],
        width=size[1],
        videos=len(videos),
        frames=total,
        computed=len(todo),
        skipped=len(videos) - len(todo),
        jpeg_bytes_per_frame=jpeg_bytes / computed if computed else 0.0,
        bytes_per_frame=storage.disk_bytes(uri) / max(total, 1),
        frames_per_second=computed / pool_seconds if computed else 0.0,
        seconds=time.perf_counter() - started,
    )


@ray.remote(num_cpus=1)
def _decode_and_write(uri: str, video: Video, size: tuple[int, int]) -> int:
    """Decode one video at `size`, store and commit it; returns the bytes of its JPEGs."""
    frames, jpeg_bytes = decode_video(video, size)
    write_video(open_frame_store(uri, mode="a"), video, frames)
    return jpeg_bytes


def _open_for_writing(uri: str):
    return open_frame_store(uri, mode="a")


def _digest(videos: list[Video], size: tuple[int, int]) -> str:
    records = [[v.split, v.video_id, v.dataset_root, v.folder, list(v.frame_ids)] for v in videos]
    return hashlib.sha256(json.dumps({"size": list(size), "videos": records}, sort_keys=True).encode()).hexdigest()
