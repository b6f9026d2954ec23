"""The built-in synthetic RVOS dataset (`prvos data synth`), written in the Ref-YouTube-VOS layout.

```
<out>/train/JPEGImages/synth0000/00000.jpg ...           every frame
<out>/train/Annotations/synth0000/00000.png ...          every K-th frame only (0, K, 2K, ...), like Ref-YouTube-VOS
<out>/train/full_annotations/synth0000/00000.png ...     every frame: to score pseudo-labels, never to train on
<out>/train/meta.json                                    objects -> {category = shape, frames annotated and visible}
<out>/valid/JPEGImages|Annotations/synthv0000/...        masks on every frame
<out>/unlabelled/JPEGImages/synthu0000/...               only with unlabelled_videos > 0: train videos without
<out>/unlabelled/full_annotations/synthu0000/...         masks (no Annotations/, no meta.json); their every-frame
                                                         masks only score pseudo-labels (data.unlabelled_split)
<out>/meta_expressions/<split>/meta_expressions.json     2-3 expressions per object, each unique in its video
<out>/synth.json                                         the arguments and counts, written last
```
The same arguments give a byte-identical tree; each video draws from its own generator seeded by
(seed, split, index). The tree is written into a hidden sibling folder and renamed into place, so a folder at
`out` is always complete. Scenes come from prvos_core.datasets.synth_scene.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from prvos_core.data.layout import SplitPaths, read_json, write_json
from prvos_core.data.masks import write_palette_mask
from prvos_core.datasets.synth_scene import DYNAMICS, VideoScene, describe_objects, plan_video, render_frame
from prvos_core.errors import ConfigError

FORMAT_VERSION = 1  # bump when the same arguments would draw different content
_JPEG_QUALITY = 90
# The position of a split in _SPLITS seeds its videos, so each split draws scenes of its own.
_SPLITS = ("train", "valid", "unlabelled")
_VIDEO_PREFIX = {"train": "synth", "valid": "synthv", "unlabelled": "synthu"}
_MIN_SIDE = 16
_MAX_FRAMES = 100_000  # frame ids have 5 digits
_COUNT_KEYS = ("train_videos", "valid_videos", "unlabelled_videos", "frames", "expressions", "masks", "full_masks")
# Arguments added after the first datasets were written, with the value that those datasets were made with.
_LATER_ARGUMENTS = {"dynamics": "linear", "unlabelled_videos": 0}


@dataclass(frozen=True)
class SynthArguments:
    """The resolved arguments of one synthetic dataset (what `synth.json` records and compares)."""

    videos: int
    valid_videos: int
    frames: int
    size: tuple[int, int]  # (height, width)
    label_every: int
    seed: int
    dynamics: str = "linear"  # prvos_core.datasets.synth_scene.DYNAMICS
    unlabelled_videos: int = 0  # videos of the split `unlabelled`


@dataclass(frozen=True)
class SynthSummary:
    """What a synthetic dataset holds."""

    root: Path
    train_videos: int
    valid_videos: int
    unlabelled_videos: int
    frames: int  # JPEGs over every split
    expressions: int  # over every split
    masks: int  # Annotations PNGs (train and valid)
    full_masks: int  # full_annotations PNGs (train and unlabelled)
    reused: bool  # True: `root` already held this dataset and nothing was written


def video_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one video; independent of how many videos the dataset has."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _SPLITS.index(split), index])))


def video_id(split: str, index: int) -> str:
    return f"{_VIDEO_PREFIX[split]}{index:04d}"


def frame_id(t: int) -> str:
    return f"{t:05d}"


def generate_synthetic(
    out: str | Path,
    *,
    videos: int = 8,
    valid_videos: int | None = None,
    frames: int = 20,
    size: tuple[int, int] = (96, 96),
    label_every: int = 5,
    seed: int = 0,
    dynamics: str = "linear",
    unlabelled_videos: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> SynthSummary:
    """Write the synthetic dataset to `out` (a new or empty folder) and return its summary.

    `valid_videos` defaults to max(1, videos // 4). If `out` already holds a dataset made with the same
    arguments it is kept as is (`reused=True`); any other non-empty `out` raises ConfigError.
    `progress(done_videos, total_videos)` is called after each video. `dynamics` is how objects change over a video
    (prvos_core.datasets.synth_scene: "linear" or "varied"). `unlabelled_videos` more videos go to the split
    `unlabelled`, with expressions and no masks but the hidden ones in full_annotations/.
    """
    arguments = _validated(videos, valid_videos, frames, size, label_every, seed, dynamics, unlabelled_videos)
    out = Path(out)
    existing = _existing(out, arguments)
    if existing is not None:
        return existing
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        # mkdtemp makes the folder private (0700); the dataset is meant to be shared like any other folder.
        staging.chmod(0o755)
        counts = _write_dataset(staging, arguments, progress)
        write_json(staging / "synth.json", {"format": FORMAT_VERSION, "arguments": asdict(arguments), **counts})
        return _commit(staging, out, arguments)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _validated(
    videos: int,
    valid_videos: int | None,
    frames: int,
    size: tuple[int, int],
    label_every: int,
    seed: int,
    dynamics: str,
    unlabelled_videos: int = 0,
) -> SynthArguments:
    """Check every argument; all problems in one ConfigError line."""
    problems = []

    def is_int(value: object) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not is_int(videos) or videos < 1:
        problems.append(f"videos must be an integer >= 1 (got {videos!r}); pass --videos 8 or more")
    if valid_videos is not None and (not is_int(valid_videos) or valid_videos < 1):
        problems.append(f"valid_videos must be an integer >= 1 or unset (got {valid_videos!r}); pass e.g. 2")
    if not is_int(frames) or not 2 <= frames <= _MAX_FRAMES:
        problems.append(f"frames must be an integer from 2 to {_MAX_FRAMES} (got {frames!r}); pass e.g. --frames 20")
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(is_int(side) and side >= _MIN_SIDE for side in size)
    ):
        problems.append(
            f"size must be (height, width), each >= {_MIN_SIDE} pixels (got {size!r}); pass e.g. --size 96 96"
        )
    if not is_int(label_every) or label_every < 1:
        problems.append(f"label_every must be an integer >= 1 (got {label_every!r}); pass e.g. --label-every 5")
    if not is_int(seed) or seed < 0:
        problems.append(f"seed must be an integer >= 0 (got {seed!r}); pass e.g. --seed 0")
    if dynamics not in DYNAMICS:
        problems.append(
            f"dynamics must be one of {', '.join(DYNAMICS)} (got {dynamics!r}); pass e.g. --dynamics varied"
        )
    if not is_int(unlabelled_videos) or unlabelled_videos < 0:
        problems.append(
            f"unlabelled_videos must be an integer >= 0 (got {unlabelled_videos!r}); pass e.g. --unlabelled-videos 4"
        )
    if problems:
        raise ConfigError("synthetic dataset: " + "; ".join(problems))
    return SynthArguments(
        videos=int(videos),
        valid_videos=int(valid_videos) if valid_videos is not None else max(1, int(videos) // 4),
        frames=int(frames),
        size=(int(size[0]), int(size[1])),
        label_every=int(label_every),
        seed=int(seed),
        dynamics=dynamics,
        unlabelled_videos=int(unlabelled_videos),
    )


def _existing(out: Path, arguments: SynthArguments) -> SynthSummary | None:
    """The summary of a complete dataset at `out` made with `arguments`; None if `out` is absent or empty."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ConfigError(f"{out} is a file; pass a new or empty folder as the synthetic dataset's --out")
    if not any(out.iterdir()):
        return None
    record_path = out / "synth.json"
    if not record_path.is_file():
        raise ConfigError(f"{out} is not empty and holds no synthetic dataset; pass a new or empty folder as --out")
    record = read_json(record_path)
    expected = {"format": FORMAT_VERSION, "arguments": asdict(arguments)}
    # JSON turns the size tuple into a list; compare through the same encoding.
    found = {"format": record.get("format"), "arguments": {**_LATER_ARGUMENTS, **(record.get("arguments") or {})}}
    if _as_json(found) != _as_json(expected):
        raise ConfigError(
            f"{out} holds a synthetic dataset made with other arguments ({record.get('arguments')}); "
            "pass the same arguments, another --out, or delete the folder"
        )
    return _summary(out, record, reused=True)


def _as_json(value: object) -> object:
    if isinstance(value, dict):
        return {key: _as_json(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_as_json(item) for item in value]
    return value


def _commit(staging: Path, out: Path, arguments: SynthArguments) -> SynthSummary:
    """Rename the finished tree into place; if another writer got there first with the same dataset, use it."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    try:
        staging.rename(out)
    except OSError:
        existing = _existing(out, arguments)
        if existing is None:
            raise
        return existing
    return _summary(out, read_json(out / "synth.json"), reused=False)


def _summary(out: Path, record: dict, reused: bool) -> SynthSummary:
    # Records written before the split `unlabelled` existed have no count for it.
    return SynthSummary(root=out, reused=reused, **{key: record.get(key, 0) for key in _COUNT_KEYS})


def _write_dataset(
    root: Path, arguments: SynthArguments, progress: Callable[[int, int], None] | None
) -> dict[str, int]:
    """Write every split under `root`; returns the counts of SynthSummary."""
    counts = dict.fromkeys(_COUNT_KEYS, 0)
    per_split = {"train": arguments.videos, "valid": arguments.valid_videos, "unlabelled": arguments.unlabelled_videos}
    counts["train_videos"], counts["valid_videos"] = arguments.videos, arguments.valid_videos
    counts["unlabelled_videos"] = arguments.unlabelled_videos
    total, done = sum(per_split.values()), 0
    for split, count in per_split.items():
        if count == 0:
            continue
        paths = SplitPaths(root, split)
        # Train masks on every K-th frame, valid on every frame, unlabelled on none (only in full_annotations).
        label_every = {"train": arguments.label_every, "valid": 1}.get(split)
        meta_videos: dict[str, dict] = {}
        expression_videos: dict[str, dict] = {}
        for index in range(count):
            rng = video_rng(arguments.seed, split, index)
            scene = plan_video(rng, arguments.frames, arguments.size, arguments.dynamics)
            descriptions = describe_objects(scene.objects, rng)
            vid = video_id(split, index)
            visible_frames = _write_video(paths, vid, scene, label_every, dense=split != "valid")
            meta_videos[vid] = {
                "objects": {
                    str(obj.object_id): {"category": obj.shape, "frames": visible_frames[obj.object_id]}
                    for obj in scene.objects
                }
            }
            texts = [(object_id, text) for object_id, phrases in descriptions.items() for text in phrases]
            expression_videos[vid] = {
                "expressions": {
                    str(key): {"exp": text, "obj_id": str(object_id)} for key, (object_id, text) in enumerate(texts)
                },
                "frames": [frame_id(t) for t in range(arguments.frames)],
            }
            counts["frames"] += arguments.frames
            counts["masks"] += len(range(0, arguments.frames, label_every)) if label_every else 0
            counts["full_masks"] += arguments.frames if split != "valid" else 0
            counts["expressions"] += len(texts)
            done += 1
            if progress is not None:
                progress(done, total)
        # meta.json lists annotated frames; an unlabelled split has none, like a real one without masks.
        if label_every:
            write_json(paths.meta, {"videos": meta_videos})
        write_json(paths.meta_expressions, {"videos": expression_videos})
    return counts


def _write_video(
    paths: SplitPaths, vid: str, scene: VideoScene, label_every: int | None, dense: bool
) -> dict[int, list[str]]:
    """Write one video's frames and masks (Annotations/ on every `label_every`-th frame, none when it is None;
    full_annotations/ on every frame when `dense`); returns, per object id, the annotated frames where it is
    visible."""
    (paths.images / vid).mkdir(parents=True)
    if label_every:
        (paths.annotations / vid).mkdir(parents=True)
    if dense:
        (paths.full_annotations / vid).mkdir(parents=True)
    visible_frames: dict[int, list[str]] = {obj.object_id: [] for obj in scene.objects}
    for t in range(scene.frames):
        frame = render_frame(scene, t)
        fid = frame_id(t)
        ok, encoded = cv2.imencode(".jpg", frame.image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        assert ok, f"JPEG encoding failed for {vid}/{fid}"
        paths.frame_path(vid, fid).write_bytes(encoded.tobytes())
        if dense:
            write_palette_mask(paths.full_annotations / vid / f"{fid}.png", frame.labels)
        if not label_every or t % label_every:
            continue
        write_palette_mask(paths.mask_path(vid, fid), frame.labels)
        for object_id in np.unique(frame.labels):
            if object_id:
                visible_frames[int(object_id)].append(fid)
    return visible_frames
