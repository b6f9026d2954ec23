"""Merging a split's `meta.json` and `meta_expressions.json` into the PRVOS seed's `new_<split>.json`.

The merged file groups everything a training sample needs under its video and object:

```
{"videos": {<video>: {
    "frames": [<every frame id listed in meta_expressions.json>],
    "objects": {<object>: {"category": str | null,
                           "frames": [<frames where meta.json says the object is annotated>],
                           "expressions": {<expression key>: <text>}}},
    "unassigned_expressions": {<expression key>: <text>}}}}
```
Expression keys are the original `meta_expressions.json` keys: a Ref-YouTube-VOS submission names its folders
`Annotations/<video>/<key>/`. Videos come from `meta_expressions.json` (a video without expressions is of no
use to referring segmentation). The valid split is merged too: its `meta.json` may have no categories (null) or
be missing (objects then come only from the expressions' `obj_id`), and its expressions may name no object
(they go to `unassigned_expressions`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prvos_core.data.layout import SplitPaths, has_bad_text, read_json, require_mapping, write_json
from prvos_core.errors import DataError

_REMAKE = "re-create it with `prvos data merge-json`"


def merge_json(root: str | Path, split: str, out: str | Path | None = None) -> Path:
    """Write the merged JSON of `<root>/<split>` to `out` (default `<root>/new_<split>.json`); return its path.

    Raises DataError naming the file and the place when an input is missing, malformed or holds text that is
    not valid UTF-8. The output is deterministic: the same inputs give the same bytes.
    """
    paths = SplitPaths(Path(root), split)
    expression_file = paths.meta_expressions
    expression_videos = _videos(read_json(expression_file), expression_file)
    known_objects: dict[str, dict[str, dict]] = {}
    if paths.meta.is_file():
        for video_id, entry in _videos(read_json(paths.meta), paths.meta).items():
            known_objects[video_id] = _meta_objects(entry, paths.meta, f"videos.{video_id}")
    merged = {
        video_id: _merge_video(entry, known_objects.get(video_id, {}), expression_file, f"videos.{video_id}")
        for video_id, entry in expression_videos.items()
    }
    target = Path(out) if out is not None else paths.merged
    write_json(target, {"videos": merged})
    return target


def read_merged(path: str | Path) -> dict:
    """Read a merged `new_<split>.json` and check its whole structure; return the parsed dict.

    Any deviation from the format in the module docstring raises DataError naming the file and the place.
    """
    path = Path(path)
    payload = read_json(path)
    for video_id, video in _videos(payload, path).items():
        where = f"videos.{video_id}"
        require_mapping(video, where, path)
        _keys(video, {"frames", "objects", "unassigned_expressions"}, path, where)
        _string_list(video["frames"], path, f"{where}.frames")
        _texts(video["unassigned_expressions"], path, f"{where}.unassigned_expressions")
        for object_id, item in require_mapping(video["objects"], f"{where}.objects", path).items():
            object_where = f"{where}.objects.{object_id}"
            require_mapping(item, object_where, path)
            _keys(item, {"category", "frames", "expressions"}, path, object_where)
            _category(item["category"], path, f"{object_where}.category")
            _string_list(item["frames"], path, f"{object_where}.frames")
            _texts(item["expressions"], path, f"{object_where}.expressions")
    return payload


def _merge_video(entry: Any, known_objects: dict[str, dict], path: Path, where: str) -> dict:
    """One video of the merged file, from its meta_expressions entry and its meta.json objects."""
    require_mapping(entry, where, path)
    frames = _string_list(entry.get("frames"), path, f"{where}.frames")
    objects = {
        object_id: {"category": item["category"], "frames": item["frames"], "expressions": {}}
        for object_id, item in known_objects.items()
    }
    unassigned: dict[str, str] = {}
    for key, item in require_mapping(entry.get("expressions"), f"{where}.expressions", path).items():
        item_where = f"{where}.expressions.{key}"
        require_mapping(item, item_where, path)
        text = _text(item.get("exp"), path, f"{item_where}.exp")
        if item.get("obj_id") is None:
            unassigned[key] = text
            continue
        # meta.json may be missing or silent about an object its expressions name: it is still an object.
        fallback = {"category": None, "frames": [], "expressions": {}}
        objects.setdefault(str(item["obj_id"]), fallback)["expressions"][key] = text
    return {"frames": frames, "objects": objects, "unassigned_expressions": unassigned}


def _meta_objects(entry: Any, path: Path, where: str) -> dict[str, dict]:
    """The objects of one meta.json video as {object: {category, frames}}; category and frames may be absent."""
    require_mapping(entry, where, path)
    objects = {}
    for object_id, item in require_mapping(entry.get("objects"), f"{where}.objects", path).items():
        object_where = f"{where}.objects.{object_id}"
        require_mapping(item, object_where, path)
        objects[object_id] = {
            "category": _category(item.get("category"), path, f"{object_where}.category"),
            "frames": _string_list(item.get("frames", []), path, f"{object_where}.frames"),
        }
    return objects


def _videos(payload: Any, path: Path) -> dict:
    videos = payload.get("videos") if isinstance(payload, dict) else None
    if not isinstance(videos, dict):
        raise DataError(f"{path}: no 'videos' object at the top level; is this a Ref-YouTube-VOS JSON file?")
    return videos


def _keys(item: dict, expected: set[str], path: Path, where: str) -> None:
    if missing := sorted(expected - item.keys()):
        raise DataError(f"{path}: {where} lacks {', '.join(missing)}; {_REMAKE}")
    if extra := sorted(item.keys() - expected):
        raise DataError(f"{path}: {where} has unknown keys {', '.join(extra)}; {_REMAKE}")


def _string_list(value: Any, path: Path, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(frame, str) for frame in value):
        raise DataError(f"{path}: {where} must be a list of frame-id strings; fix the entry")
    return value


def _category(value: Any, path: Path, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise DataError(f"{path}: {where} must be a string or null, got {type(value).__name__}; fix the entry")
    return value


def _text(value: Any, path: Path, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{path}: {where} must be a text string, got {type(value).__name__}; fix the entry")
    if has_bad_text(value):
        raise DataError(f"{path}: {where} is not valid UTF-8; re-save the file as UTF-8")
    return value


def _texts(value: Any, path: Path, where: str) -> None:
    for key, text in require_mapping(value, where, path).items():
        _text(text, path, f"{where}.{key}")
