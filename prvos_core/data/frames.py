"""Reading frames and masks for the model: decode, crop, resize.

Frames reach the model as uint8 RGB (3, H, W) and become floats in [0, 1] on the device (cheaper to move
between processes than floats). Crops are boxes in normalised coordinates, so one box applies to a frame, its
ground-truth mask and a pseudo-label stored at another resolution alike.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np

from prvos_core import storage
from prvos_core.data.layout import target_objects
from prvos_core.data.masks import read_mask
from prvos_core.errors import DataError


@dataclass(frozen=True)
class Box:
    """A crop in normalised coordinates: top-left (y0, x0) and bottom-right (y1, x1), each in [0, 1]."""

    y0: float = 0.0
    x0: float = 0.0
    y1: float = 1.0
    x1: float = 1.0

    def pixels(self, height: int, width: int) -> tuple[int, int, int, int]:
        top, left = int(round(self.y0 * height)), int(round(self.x0 * width))
        bottom = max(top + 1, int(round(self.y1 * height)))
        right = max(left + 1, int(round(self.x1 * width)))
        return top, left, bottom, right


FULL = Box()


# libjpeg decodes straight to 1/2, 1/4 or 1/8 of the size by scaling its inverse DCT.
_REDUCED_DECODE = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                   8: cv2.IMREAD_REDUCED_COLOR_8}  # fmt: skip


def decode_frame(uri: str, reduce: int = 1) -> np.ndarray:
    """A JPEG as an (H, W, 3) uint8 RGB array, or (ceil(H / reduce), ceil(W / reduce), 3) for reduce 2, 4 or 8;
    DataError naming the file if it does not decode."""
    return decode_jpeg(storage.read_bytes(uri), uri, reduce)


def decode_jpeg(data: bytes, uri: str, reduce: int = 1) -> np.ndarray:
    """`decode_frame` of the bytes `data` already read from `uri`."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _REDUCED_DECODE[reduce])
    if image is None:
        raise DataError(f"{uri}: cannot decode the frame; re-run ingest to quarantine it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def resize_frame(image: np.ndarray, size: tuple[int, int], box: Box = FULL) -> np.ndarray:
    """Crop `box` out of an (H, W, 3) image and resize to `size` (height, width) -> (3, h, w) uint8."""
    top, left, bottom, right = box.pixels(*image.shape[:2])
    crop = image[top:bottom, left:right]
    resized = cv2.resize(
        crop, (size[1], size[0]), interpolation=cv2.INTER_AREA if crop.shape[0] > size[0] else cv2.INTER_LINEAR
    )
    return np.ascontiguousarray(resized.transpose(2, 0, 1))


def decode_reduction(frame_size: tuple[int, int], size: tuple[int, int], box: Box = FULL) -> int:
    """The largest JPEG decode reduction (1, 2, 4 or 8) whose `box` crop still covers `size` (height, width)
    of a frame of `frame_size`: a 720p frame for a 128-pixel model decodes at 1/4 and skips most of the
    full-size decode and area resize, which cost more than the tiny model's step on them."""
    for factor in (8, 4, 2):
        top, left, bottom, right = box.pixels(-(-frame_size[0] // factor), -(-frame_size[1] // factor))
        if bottom - top >= size[0] and right - left >= size[1]:
            return factor
    return 1


def load_frame(
    uri: str, size: tuple[int, int], box: Box = FULL, frame_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode, crop `box` and resize to `size` -> (3, h, w) uint8; `frame_size` (H, W) of the JPEG, when known,
    lets it decode at a reduced scale that still covers the crop (see `decode_reduction`)."""
    reduce = decode_reduction(frame_size, size, box) if frame_size else 1
    return resize_frame(decode_frame(uri, reduce), size, box)


def resize_map(values: np.ndarray, size: tuple[int, int], box: Box = FULL) -> np.ndarray:
    """Crop and resize an (H, W) label or weight map with nearest-neighbour sampling (labels stay labels)."""
    top, left, bottom, right = box.pixels(*values.shape)
    return cv2.resize(values[top:bottom, left:right], (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def read_object_mask(uri: str, object_id: str) -> np.ndarray:
    """The (H, W) uint8 0/1 mask of one object (or of the union of several, '1-3': layout.target_objects) from an
    id-valued palette PNG."""
    try:
        ids = read_mask(io.BytesIO(storage.read_bytes(uri)))
    except (OSError, ValueError) as error:
        raise DataError(f"{uri}: cannot read the mask ({error}); re-run ingest to quarantine it") from None
    parts = [int(part) for part in target_objects(object_id)]
    return (ids == parts[0]).astype(np.uint8) if len(parts) == 1 else np.isin(ids, parts).astype(np.uint8)
