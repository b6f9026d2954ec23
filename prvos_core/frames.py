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
from prvos_core.errors import DataError
from prvos_core.masks import read_mask


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


def decode_frame(uri: str) -> np.ndarray:
    """A JPEG as an (H, W, 3) uint8 RGB array; DataError naming the file if it does not decode."""
    data = storage.read_bytes(uri)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
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


def resize_map(values: np.ndarray, size: tuple[int, int], box: Box = FULL) -> np.ndarray:
    """Crop and resize an (H, W) label or weight map with nearest-neighbour sampling (labels stay labels)."""
    top, left, bottom, right = box.pixels(*values.shape)
    return cv2.resize(values[top:bottom, left:right], (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def read_object_mask(uri: str, object_id: str) -> np.ndarray:
    """The (H, W) uint8 0/1 mask of one object from an id-valued palette PNG."""
    try:
        ids = read_mask(io.BytesIO(storage.read_bytes(uri)))
    except (OSError, ValueError) as error:
        raise DataError(f"{uri}: cannot read the mask ({error}); re-run ingest to quarantine it") from None
    return (ids == int(object_id)).astype(np.uint8)
