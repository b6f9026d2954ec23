"""The Ref-YouTube-VOS dataset layout on disk: paths and JSON readers.

```
<root>/<split>/JPEGImages/<video>/<frame>.jpg
<root>/<split>/Annotations/<video>/<frame>.png        palette PNG, pixel value = object id
<root>/<split>/meta.json                              {videos: {vid: {objects: {oid: {category, frames}}}}}
<root>/meta_expressions/<split>/meta_expressions.json {videos: {vid: {expressions: {key: {exp, obj_id?}}, frames}}}
<root>/new_<split>.json                               merged: see prvos_core.datasets.merge_json
```
An expression may refer to several objects (MeViS): its `obj_id` is then a list, and its object id the numbers
joined by '-' (`target_id`); its target is the union of their masks.
Every reader raises `DataError` naming the file and the fix; JSON text that is not UTF-8 is read with
surrogate escapes so one bad expression can be quarantined instead of failing the whole file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prvos_core import storage
from prvos_core.errors import DataError


@dataclass(frozen=True)
class SplitPaths:
    """Where one split of a Ref-YouTube-VOS-layout dataset lives."""

    root: Path
    split: str

    @property
    def split_dir(self) -> Path:
        return self.root / self.split

    @property
    def images(self) -> Path:
        return self.split_dir / "JPEGImages"

    @property
    def annotations(self) -> Path:
        return self.split_dir / "Annotations"

    @property
    def full_annotations(self) -> Path:
        """Dense masks of the synthetic train split, used only to score pseudo-labels."""
        return self.split_dir / "full_annotations"

    @property
    def meta(self) -> Path:
        return self.split_dir / "meta.json"

    @property
    def meta_expressions(self) -> Path:
        return self.root / "meta_expressions" / self.split / "meta_expressions.json"

    @property
    def merged(self) -> Path:
        return self.root / f"new_{self.split}.json"

    def frame_path(self, video_id: str, frame_id: str) -> Path:
        return self.images / video_id / f"{frame_id}.jpg"

    def mask_path(self, video_id: str, frame_id: str) -> Path:
        return self.annotations / video_id / f"{frame_id}.png"


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a missing, unreadable or malformed file raises DataError with the fix.

    Bytes that are not UTF-8 come through as surrogate escapes (see `has_bad_text`), so the caller can
    quarantine just the affected strings.
    """
    path = storage.dataset_path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the dataset root and split name")
    try:
        text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror}); check its permissions") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}: malformed JSON at line {error.lineno} column {error.colno} ({error.msg}); "
            "fix or re-download the file"
        ) from None


def has_bad_text(text: str) -> bool:
    """True if `text` came from bytes that are not valid UTF-8 (it holds surrogate escapes)."""
    return any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON deterministically (sorted keys, UTF-8), through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(json.dumps(payload, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    temporary.replace(path)


def require_mapping(value: Any, where: str, path: Path) -> dict:
    """`value` must be a JSON object; else DataError naming the file and the place."""
    if not isinstance(value, dict):
        raise DataError(f"{path}: {where} must be a JSON object, got {type(value).__name__}; fix the file")
    return value


TARGET_SEPARATOR = "-"  # '+' would read better, but object ids go into file names (prvos_core.storage.id_problem)


def target_id(object_numbers: Iterable[int]) -> str:
    """The object id of an expression that refers to the objects `object_numbers`: sorted, without repeats,
    joined by '-' ([3, 1] -> '1-3'); one object keeps its plain number ('3')."""
    return TARGET_SEPARATOR.join(str(number) for number in sorted(set(object_numbers)))


def target_objects(object_id: str) -> tuple[str, ...] | None:
    """The objects an object id names, as their meta.json keys ('1-3' -> ('1', '3'), '3' -> ('3',)); None when a
    part is not a number (mask pixel values are object ids)."""
    parts = tuple(object_id.split(TARGET_SEPARATOR))
    return parts if all(part.isdigit() for part in parts) else None
