"""Converting MeViS (motion expressions, which may refer to several objects; masks as COCO RLE) to the
Ref-YouTube-VOS layout that ingest, training and evaluation read.

Input, as MeViS ships it (github.com/henghuiding/MeViS, "File Structure"):
```
<mevis_root>/<split>/JPEGImages/<video>/<frame>.jpg
<mevis_root>/<split>/meta_expressions.json  {videos: {vid: {expressions: {key: {exp, obj_id: [..], anno_id: [..]}},
                                                             frames: [..]}}}
<mevis_root>/<split>/mask_dict.json         {anno_id: [COCO RLE or null for each frame of `frames`, in order]}
```
`train` and `valid_u` have mask_dict.json; `valid` (the online benchmark's) has none. An expression's target is
the union of the masks of its `anno_id`s, as MeViS's own evaluation (tools/eval_mevis.py) takes it.

Output (prvos_core.data.layout): frames hard-linked (copied where a link is impossible); where the split has
masks, a palette PNG for every listed frame whose pixel value is the MeViS object number + 1 (MeViS counts objects
from 0; 0 is background here), meta.json listing every object with the frames its mask shows it in, and
meta_expressions.json whose `obj_id` is the list of an expression's objects (`layout.target_id`) and whose
"benchmark" is "MeViS". Expression keys are kept: they name the expression's folder in the benchmark's submission.

Why convert instead of reading MeViS in place: every mask reader of the pipeline (training clips, the teacher's
anchors, pseudo-label scores, evaluation) reads one PNG per frame on any Ray worker, while mask_dict.json holds
every mask of a split in one JSON file that each worker would have to parse whole.

Left out and listed in the summary: expressions with no target (MeViS 2024's no-target sentences; the model
always segments something) and expressions whose obj_id / anno_id lists do not pair up. Kept, for ingest to
quarantine with its reason: an expression naming an object that has no mask (its anno_id is not in mask_dict.json
or has no pixel on any frame). Where two objects' masks overlap, a palette PNG keeps one object per pixel (the
higher number); the summary counts those pixels.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from prvos_core import storage
from prvos_core.data.layout import SplitPaths, read_json, require_mapping, write_json
from prvos_core.data.masks import write_palette_mask
from prvos_core.errors import DataError
from prvos_core.storage import id_problem

EXPRESSIONS_FILE = "meta_expressions.json"
MASKS_FILE = "mask_dict.json"
# Written beside "videos" in the output's meta_expressions.json (readers of the layout look at "videos" only), so
# that `prvos evaluate` writes a MeViS submission for a converted split.
BENCHMARK_KEY, BENCHMARK = "benchmark", "MeViS"
_MAX_OBJECT = 254  # palette value of the last object; 255 is "void" in the DAVIS palette convention


@dataclass(frozen=True)
class MevisSummary:
    """What `convert_mevis` wrote, and what it left for ingest to quarantine or left out."""

    out: Path
    videos: dict[str, int]  # split -> videos written
    expressions: dict[str, int]  # split -> expressions written
    several_objects: int  # of them, expressions whose target is the union of several objects
    frames: int
    masks: int
    without_mask: tuple[str, ...]  # "<split>/<video>/expression <key> (anno_id 17)": ingest quarantines them
    left_out: tuple[str, ...]  # "<split>/<video>/expression <key>: <reason>"
    overlap_pixels: int  # pixels two objects' masks both claim (the higher object number keeps them)

    def __str__(self) -> str:
        splits = ", ".join(f"{s}: {self.videos[s]} videos, {self.expressions[s]} expressions" for s in self.videos)
        text = f"{splits} ({self.several_objects} of several objects); {self.frames} frames, {self.masks} masks"
        if self.without_mask:
            text += (
                f"; {len(self.without_mask)} expression(s) name an object with no mask, ingest quarantines them "
                f"(first: {self.without_mask[0]})"
            )
        if self.left_out:
            text += f"; left out {len(self.left_out)} expression(s) (first: {self.left_out[0]})"
        if self.overlap_pixels:
            text += f"; {self.overlap_pixels} pixels claimed by two objects kept for the higher object number"
        return text


def mevis_splits(root: str | Path) -> list[str]:
    """The split folders of a MeViS root (those holding meta_expressions.json), sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(child.name for child in root.iterdir() if (child / EXPRESSIONS_FILE).is_file())


def convert_mevis(
    mevis_root: str | Path,
    out: str | Path,
    *,
    splits: tuple[str, ...] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> MevisSummary:
    """Convert the MeViS splits `splits` (default: every split folder) of `mevis_root` into a Ref-YouTube-VOS-layout
    dataset at `out`, written whole or not at all. `progress(done, total)` is called after each video."""
    root, out = Path(mevis_root), Path(out)
    splits = splits or tuple(mevis_splits(root))
    if not splits:
        raise DataError(
            f"{root}: no MeViS split (a folder holding {EXPRESSIONS_FILE}, e.g. train/, valid_u/); give the MeViS root"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists and is not empty; remove it or choose another output folder")
    sources = {split: _read_split(root, split) for split in splits}
    total = sum(len(videos) for videos, _ in sources.values())
    converted: dict[str, list[_Converted]] = {}
    with storage.staged_folder(out) as staging:
        for split, (videos, masks) in sources.items():
            paths = SplitPaths(staging, split)
            converted[split] = []
            for video_id, entry in videos.items():
                converted[split].append(_convert_video(root / split, paths, video_id, entry, masks))
                if progress is not None:
                    progress(sum(map(len, converted.values())), total)
            written = [video for video in converted[split] if video.entry is not None]
            if masks is not None:
                write_json(paths.meta, {"videos": {v.video_id: {"objects": v.objects} for v in written}})
            entries = {v.video_id: v.entry for v in written}
            write_json(paths.meta_expressions, {"videos": entries, BENCHMARK_KEY: BENCHMARK})
    every = [video for videos in converted.values() for video in videos]
    return MevisSummary(
        out=out,
        videos={split: sum(v.entry is not None for v in videos) for split, videos in converted.items()},
        expressions={split: sum(v.expressions for v in videos) for split, videos in converted.items()},
        several_objects=sum(v.several_objects for v in every),
        frames=sum(v.frames for v in every),
        masks=sum(v.masks for v in every),
        without_mask=tuple(item for v in every for item in v.without_mask),
        left_out=tuple(item for v in every for item in v.left_out),
        overlap_pixels=sum(v.overlap_pixels for v in every),
    )


def _read_split(root: Path, split: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(videos of meta_expressions.json, mask_dict.json or None when the split has no masks)."""
    expressions_path = root / split / EXPRESSIONS_FILE
    payload = read_json(expressions_path)
    videos = payload.get("videos") if isinstance(payload, dict) else None
    videos = require_mapping(videos, "'videos'", expressions_path)
    masks_path = root / split / MASKS_FILE
    masks = require_mapping(read_json(masks_path), "the top level", masks_path) if masks_path.is_file() else None
    return videos, masks


@dataclass
class _Converted:
    """One video of the output: meta.json's objects and meta_expressions.json's entry (None: video left out)."""

    video_id: str
    entry: dict | None = None
    objects: dict[str, dict] = field(default_factory=dict)
    frames: int = 0
    masks: int = 0
    several_objects: int = 0
    overlap_pixels: int = 0
    without_mask: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)

    @property
    def expressions(self) -> int:
        return len(self.entry["expressions"]) if self.entry is not None else 0


def _convert_video(source: Path, paths: SplitPaths, video_id: str, entry: Any, masks: dict | None) -> _Converted:
    """Place one video's frames (and masks) under `paths`; describe it for meta.json and meta_expressions.json."""
    result = _Converted(video_id)
    where = f"{paths.split}/{video_id}"
    frames = entry.get("frames") if isinstance(entry, dict) else None
    problem = id_problem(video_id) or (
        None if isinstance(frames, list) and isinstance(entry.get("expressions"), dict) else "no frames or expressions"
    )
    if problem:
        result.left_out.append(f"{where}: {problem}")
        return result
    frames = [str(frame) for frame in frames]
    _link_frames(source / "JPEGImages" / video_id, paths.images / video_id, frames)
    expressions, objects = _expressions(entry["expressions"], where, masks is not None, result.left_out)
    result.entry = {"frames": frames, "expressions": expressions}
    result.frames = len(frames)
    result.several_objects = sum(len(item.get("obj_id", ())) > 1 for item in expressions.values())
    if masks is None:
        return result
    shown = _write_masks(source, paths, video_id, frames, objects, masks, result)
    result.objects = {str(number): {"category": None, "frames": shown[number]} for number in sorted(objects)}
    for key, item in expressions.items():
        empty = [objects[number] for number in item["obj_id"] if not shown[number]]
        if empty:
            result.without_mask.append(f"{where}/expression {key} (anno_id {', '.join(map(str, empty))})")
    return result


def _expressions(items: dict, where: str, masked: bool, left_out: list[str]) -> tuple[dict[str, dict], dict[int, str]]:
    """(meta_expressions.json's expressions, object number -> anno_id) of one video. Without masks (the online
    split) an expression keeps its text only, as Ref-YouTube-VOS valid's do."""
    expressions: dict[str, dict] = {}
    objects: dict[int, str] = {}
    for key, item in items.items():
        item = item if isinstance(item, dict) else {}
        if not masked:
            expressions[str(key)] = {"exp": item.get("exp")}
            continue
        pairs, problem = _pairs(item.get("obj_id"), item.get("anno_id"))
        for number, anno_id in pairs:
            if objects.get(number, anno_id) != anno_id:
                problem = f"object {number - 1} is anno_id {anno_id} here but {objects[number]} elsewhere in the video"
        if problem:
            left_out.append(f"{where}/expression {key}: {problem}")
            continue
        objects.update(pairs)
        expressions[str(key)] = {"exp": item.get("exp"), "obj_id": sorted(number for number, _ in pairs)}
    return expressions, objects


def _pairs(obj_ids: Any, anno_ids: Any) -> tuple[list[tuple[int, str]], str | None]:
    """[(object number = obj_id + 1, anno_id)] of one expression, or the reason it has none."""
    if not isinstance(obj_ids, list) or not isinstance(anno_ids, list) or len(obj_ids) != len(anno_ids):
        return [], "obj_id and anno_id are not lists of equal length"
    if not obj_ids:
        return [], "no target object (a no-target expression; the model always segments a target)"
    if not all(type(value) is int and 0 <= value < _MAX_OBJECT for value in obj_ids):
        return [], f"obj_id {obj_ids} is not a list of object numbers from 0 to {_MAX_OBJECT - 1}"
    return [(value + 1, str(anno_id)) for value, anno_id in zip(obj_ids, anno_ids, strict=True)], None


def _write_masks(
    source: Path, paths: SplitPaths, video_id: str, frames: list[str], objects: dict[int, str], masks: dict,
    result: _Converted,
) -> dict[int, list[str]]:  # fmt: skip
    """Write a palette PNG for every listed frame; returns object number -> the frames its mask shows it in."""
    tracks = {number: _track(masks, anno_id, len(frames), video_id) for number, anno_id in objects.items()}
    size = _frame_size(tracks, source / "JPEGImages" / video_id, frames)
    shown: dict[int, list[str]] = {number: [] for number in objects}
    for index, frame in enumerate(frames):
        if size is None or id_problem(frame):
            continue  # ingest quarantines the listed frame that has no file
        ids = np.zeros(size, dtype=np.uint8)
        for number in sorted(tracks):
            rle = tracks[number][index]
            if not rle:
                continue
            pixels = _decode(rle, objects[number], index) > 0
            if pixels.shape != size:
                raise DataError(
                    f"{MASKS_FILE} of {paths.split}: anno_id {objects[number]} is {pixels.shape[::-1]} on frame "
                    f"{frame} but {size[::-1]} elsewhere in video {video_id}; re-download the file"
                )
            result.overlap_pixels += int(np.count_nonzero(ids[pixels]))
            ids[pixels] = number
            shown[number].append(frame)
        target = paths.mask_path(video_id, frame)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_palette_mask(target, ids)
        result.masks += 1
    return shown


def _track(masks: dict, anno_id: str, length: int, video_id: str) -> list:
    """One object's RLE per frame; an anno_id missing from mask_dict.json has no mask on any frame."""
    track = masks.get(anno_id)
    if track is None:
        return [None] * length
    if not isinstance(track, list) or len(track) != length:
        frames = len(track) if isinstance(track, list) else "no"
        raise DataError(
            f"{MASKS_FILE}: anno_id {anno_id} has {frames} frames but video {video_id} lists {length} in "
            f"{EXPRESSIONS_FILE}; the two files come from different MeViS releases, re-download them together"
        )
    return track


def _decode(rle: Any, anno_id: str, index: int) -> np.ndarray:
    """An (H, W) uint8 mask from one COCO RLE ({size: [h, w], counts: str})."""
    try:
        return coco_mask.decode(rle)
    except (TypeError, ValueError, KeyError) as error:
        raise DataError(
            f"{MASKS_FILE}: anno_id {anno_id}, frame {index}: not a COCO RLE ({type(error).__name__}: {error}); "
            "re-download the file"
        ) from None


def _frame_size(tracks: dict[int, list], images: Path, frames: list[str]) -> tuple[int, int] | None:
    """(height, width) of the video: any RLE's size, else its first frame's; None when it has neither."""
    for track in tracks.values():
        for rle in track:
            if isinstance(rle, dict) and isinstance(rle.get("size"), list) and len(rle["size"]) == 2:
                return int(rle["size"][0]), int(rle["size"][1])
    for frame in frames:
        path = images / f"{frame}.jpg"
        if path.is_file():
            with Image.open(path) as image:
                return image.height, image.width
    return None


def _link_frames(source: Path, target: Path, frames: list[str]) -> None:
    """Hard-link the listed frames' JPEGs at `target` (copied where links are impossible: another filesystem, no
    rights); a listed frame without its file is left for ingest to quarantine."""
    for frame in frames:
        path = source / f"{frame}.jpg"
        if id_problem(frame) or not path.is_file():
            continue
        target.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copyfile(path, target / path.name)
