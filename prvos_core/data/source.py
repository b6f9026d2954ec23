"""Reading a dataset's JSON description into raw records, before any file is checked.

Two sources describe a split: the Ref-YouTube-VOS layout (`meta_expressions.json` + optional `meta.json`) and
the merged `new_<split>.json` (see prvos_core.datasets.merge_json). Both become the same `RawVideo` records. Problems
that concern one item become quarantine rows; only a file that cannot be read at all raises `DataError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prvos_core import storage
from prvos_core.data.layout import SplitPaths, read_json, target_id
from prvos_core.data.manifest import QuarantineRow
from prvos_core.errors import DataError
from prvos_core.storage import id_problem


@dataclass(frozen=True)
class RawObject:
    category: str | None
    frames: tuple[str, ...]  # frames where meta.json says the object is annotated


@dataclass(frozen=True)
class RawExpression:
    key: str
    object_id: str  # "" when the source does not name the object
    text: Any  # as found in the JSON: validated later (type, emptiness, length, encoding)
    annotator: int | None = None  # Ref-DAVIS17 (see prvos_core.datasets.davis)
    kind: str | None = None


@dataclass(frozen=True)
class RawVideo:
    video_id: str
    listed_frames: tuple[str, ...]
    objects: dict[str, RawObject] | None  # None: the split has no meta.json, objects are unknown
    expressions: tuple[RawExpression, ...]


@dataclass(frozen=True)
class SplitSource:
    dataset_root: str
    split: str
    source_file: str
    videos: tuple[RawVideo, ...]
    quarantine: tuple[QuarantineRow, ...]


def locate(root: str | Path) -> tuple[Path, str | None]:
    """Resolve `data.root`: a dataset folder, or a merged `new_<split>.json` (returns its folder and split)."""
    storage.require_access(str(root))
    path = storage.dataset_path(root)
    if path.is_file() and path.name.startswith("new_") and path.suffix == ".json":
        return path.parent, path.stem.removeprefix("new_")
    if not path.is_dir():
        raise DataError(f"dataset root {root} not found; give a Ref-YouTube-VOS-layout folder or a new_<split>.json")
    return path, None


def split_exists(root: str | Path, split: str) -> bool:
    paths = SplitPaths(storage.dataset_path(root), split)
    return paths.merged.is_file() or paths.meta_expressions.is_file()


def read_split(root: str | Path, split: str) -> SplitSource:
    """Raw records of one split, from `new_<split>.json` when it is there, else from the layout's JSON files."""
    paths = SplitPaths(storage.dataset_path(root), split)
    if paths.merged.is_file():
        return _from_merged(paths)
    if paths.meta_expressions.is_file():
        return _from_layout(paths)
    if (paths.split_dir / "meta_expressions.json").is_file():
        # MeViS keeps its masks as COCO RLE in one JSON per split, which no mask reader here reads.
        raise DataError(
            f"split {split!r} of {root} is in the MeViS layout ({split}/meta_expressions.json); convert it once "
            f"with `prvos data convert-mevis {root} --out DIR` and use DIR as the dataset root"
        )
    raise DataError(
        f"split {split!r} of {root}: neither {paths.meta_expressions} nor {paths.merged} exists; "
        "check data.root and the split names"
    )


def read_unlabelled_split(root: str | Path, split: str) -> SplitSource:
    """Raw records of the split of unlabelled videos (`data.unlabelled_split`), from the same JSON files."""
    require_unlabelled_split(root, split)
    return read_split(root, split)


def require_unlabelled_split(root: str | Path, split: str) -> None:
    """A missing split of unlabelled videos is the user's error: DataError naming the files and the settings."""
    if not split_exists(root, split):
        paths = SplitPaths(storage.dataset_path(root), split)
        raise DataError(
            f"data.unlabelled_split {split!r} of {root}: neither {paths.meta_expressions} nor {paths.merged} "
            "exists; check data.unlabelled_split and data.unlabelled_root"
        )


def _videos_mapping(payload: Any, path: Path) -> dict:
    videos = payload.get("videos") if isinstance(payload, dict) else None
    if not isinstance(videos, dict):
        raise DataError(f"{path}: no 'videos' object at the top level; is this a Ref-YouTube-VOS JSON file?")
    return videos


def _from_layout(paths: SplitPaths) -> SplitSource:
    quarantine: list[QuarantineRow] = []
    source = str(paths.meta_expressions)
    expressions_by_video = _videos_mapping(read_json(paths.meta_expressions), paths.meta_expressions)
    objects_by_video = None
    if paths.meta.is_file():
        objects_by_video = {}
        for video_id, entry in _videos_mapping(read_json(paths.meta), paths.meta).items():
            objects = entry.get("objects") if isinstance(entry, dict) else None
            if not isinstance(objects, dict):
                quarantine.append(QuarantineRow(str(paths.meta), str(video_id), "video entry has no 'objects' object"))
                continue
            objects_by_video[video_id] = _objects(objects, str(paths.meta), video_id, quarantine)
    videos = []
    for video_id, entry in expressions_by_video.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("expressions"), dict):
            quarantine.append(QuarantineRow(source, str(video_id), "video entry has no 'expressions' object"))
            continue
        raw_expressions = []
        for key, item in entry["expressions"].items():
            if not isinstance(item, dict) or "exp" not in item:
                quarantine.append(QuarantineRow(source, f"{video_id}/expression {key}", "expression has no 'exp' text"))
                continue
            annotator = item.get("annotator")
            raw_expressions.append(
                RawExpression(
                    str(key),
                    _object_id(item.get("obj_id", "")),
                    item["exp"],
                    annotator if isinstance(annotator, int) else None,
                    item.get("kind") if isinstance(item.get("kind"), str) else None,
                )
            )
        objects = None if objects_by_video is None else objects_by_video.get(video_id, {})
        videos.append(_video(video_id, entry.get("frames"), objects, raw_expressions, source, quarantine))
    return _split_source(paths, source, videos, quarantine)


def _object_id(value: Any) -> str:
    """`obj_id` as the expression's object id; a list of object numbers (an expression that refers to several
    objects, as MeViS's do) as their `target_id`."""
    if isinstance(value, list) and all(type(v) is int or (isinstance(v, str) and v.isdigit()) for v in value):
        return target_id(int(v) for v in value)
    return str(value)


def _from_merged(paths: SplitPaths) -> SplitSource:
    quarantine: list[QuarantineRow] = []
    source = str(paths.merged)
    videos = []
    for video_id, entry in _videos_mapping(read_json(paths.merged), paths.merged).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("objects", {}), dict):
            quarantine.append(QuarantineRow(source, str(video_id), "video entry has no 'objects' object"))
            continue
        objects = _objects(entry.get("objects", {}), source, video_id, quarantine)
        raw_expressions = []
        for object_id, item in entry.get("objects", {}).items():
            texts = item.get("expressions", {}) if isinstance(item, dict) else {}
            for key, text in _keyed(texts):
                raw_expressions.append(RawExpression(key, str(object_id), text))
        for key, text in _keyed(entry.get("unassigned_expressions", {})):
            raw_expressions.append(RawExpression(key, "", text))
        videos.append(_video(video_id, entry.get("frames"), objects, raw_expressions, source, quarantine))
    return _split_source(paths, source, videos, quarantine)


def _keyed(texts: Any) -> list[tuple[str, Any]]:
    if isinstance(texts, dict):
        return [(str(key), text) for key, text in texts.items()]
    if isinstance(texts, list):
        return [(str(index), text) for index, text in enumerate(texts)]
    return []


def _objects(objects: dict, source: str, video_id: str, quarantine: list[QuarantineRow]) -> dict[str, RawObject]:
    result = {}
    for object_id, item in objects.items():
        frames = item.get("frames", []) if isinstance(item, dict) else None
        if not isinstance(frames, list):
            quarantine.append(QuarantineRow(source, f"{video_id}/object {object_id}", "object entry has no frame list"))
            continue
        category = item.get("category")
        result[str(object_id)] = RawObject(category if isinstance(category, str) else None, tuple(map(str, frames)))
    return result


def _video(video_id, frames, objects, expressions, source, quarantine) -> RawVideo:
    listed = tuple(sorted(str(frame) for frame in frames)) if isinstance(frames, list) else ()
    if not isinstance(frames, list):
        quarantine.append(
            QuarantineRow(source, str(video_id), "video entry has no 'frames' list; frames taken from disk")
        )
    return RawVideo(str(video_id), listed, objects, tuple(expressions))


def _split_source(
    paths: SplitPaths, source: str, videos: list[RawVideo], quarantine: list[QuarantineRow]
) -> SplitSource:
    kept = []
    for video in videos:
        if problem := id_problem(video.video_id):
            quarantine.append(QuarantineRow(source, video.video_id, f"unsafe video id: {problem}"))
        else:
            kept.append(video)
    return SplitSource(str(paths.root), paths.split, source, tuple(kept), tuple(quarantine))


def files_on_disk(root: str, split: str, video_id: str) -> tuple[list[str], list[str]]:
    """Frame ids of the JPEGs and of the mask PNGs found on disk for one video (sorted)."""
    paths = SplitPaths(storage.dataset_path(root), split)
    jpegs = [n[:-4] for n in storage.listdir(str(paths.images / video_id)) if n.endswith(".jpg")]
    pngs = [n[:-4] for n in storage.listdir(str(paths.annotations / video_id)) if n.endswith(".png")]
    return jpegs, pngs
