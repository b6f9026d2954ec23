"""Checking dataset files: does each JPEG decode whole, does each mask PNG read, what size, which object ids.

`check_files` is a plain function over a batch of files so the ingest stage can fan batches out in parallel
(Ray tasks); it never raises for a bad file, it reports it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from prvos_core import storage
from prvos_core.data.masks import read_mask
from prvos_core.errors import StorageError

FileKind = Literal["frame", "mask"]

_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"


@dataclass(frozen=True)
class FileCheck:
    kind: FileKind
    uri: str


@dataclass(frozen=True)
class FileReport:
    kind: FileKind
    uri: str
    problem: str | None  # None: the file is usable
    height: int = 0
    width: int = 0
    object_ids: tuple[int, ...] = ()  # masks only: ids present (0 = background excluded)


def check_files(checks: list[FileCheck], decode: bool = True) -> list[FileReport]:
    """Report on each file; `decode=False` reads only headers (fast, misses corrupt pixel data)."""
    return [_check_frame(c.uri, decode) if c.kind == "frame" else _check_mask(c.uri) for c in checks]


def _check_frame(uri: str, decode: bool) -> FileReport:
    try:
        data = storage.read_bytes(uri)
    except StorageError as error:
        return FileReport("frame", uri, f"cannot read the JPEG ({error})")
    if not data.startswith(_JPEG_START):
        return FileReport("frame", uri, "not a JPEG file (bad start marker)")
    # cv2 decodes a truncated JPEG with only a warning, so the end-of-image marker is checked explicitly.
    if not data.rstrip(b"\x00").endswith(_JPEG_END):
        return FileReport("frame", uri, "truncated JPEG (no end-of-image marker)")
    if not decode:
        height, width = _jpeg_size(data)
        if height == 0:
            return FileReport("frame", uri, "corrupt JPEG (no readable size)")
        return FileReport("frame", uri, None, height, width)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return FileReport("frame", uri, "corrupt JPEG (cannot be decoded)")
    return FileReport("frame", uri, None, int(image.shape[0]), int(image.shape[1]))


def _jpeg_size(data: bytes) -> tuple[int, int]:

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.height, image.width
    except (UnidentifiedImageError, OSError):
        return 0, 0


def _check_mask(uri: str) -> FileReport:

    try:
        data = storage.read_bytes(uri)
    except StorageError as error:
        return FileReport("mask", uri, f"cannot read the mask ({error})")
    try:
        ids = read_mask(io.BytesIO(data))
    except ValueError as error:
        return FileReport("mask", uri, f"mask colours outside the DAVIS palette ({error})")
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        return FileReport("mask", uri, f"corrupt PNG mask ({error})")
    present = tuple(int(v) for v in np.unique(ids) if v != 0)
    return FileReport("mask", uri, None, int(ids.shape[0]), int(ids.shape[1]), present)
