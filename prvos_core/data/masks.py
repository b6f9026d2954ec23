"""Palette-PNG masks: reading, writing and the DAVIS palette.

Ref-YouTube-VOS and DAVIS store instance masks as 8-bit palette PNGs whose pixel values are object ids
(0 = background). OpenCV drops the palette, so masks go through Pillow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def davis_palette() -> list[int]:
    """The standard DAVIS / PASCAL VOC colour map: 256 RGB triplets flattened to 768 ints."""
    palette = []
    for index in range(256):
        r = g = b = 0
        value = index
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette.extend((r, g, b))
    return palette


_PALETTE = davis_palette()


def write_palette_mask(path: str | Path, ids: np.ndarray) -> None:
    """Write an (H, W) uint8 array of object ids as a palette PNG (deterministic bytes)."""
    if ids.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {ids.shape}")
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette(_PALETTE)
    image.save(path, format="PNG", optimize=False)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask PNG as an (H, W) uint8 array of object ids.

    Palette and greyscale PNGs give their raw values; an RGB(A) PNG is mapped back through the DAVIS palette
    (a colour outside the palette raises ValueError).
    """
    with Image.open(path) as image:
        image.load()
        if image.mode in ("P", "L"):
            return np.asarray(image, dtype=np.uint8).copy()
        if image.mode in ("1", "I;16", "I"):
            return np.asarray(image.convert("L"), dtype=np.uint8).copy()
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    lookup = {tuple(_PALETTE[3 * i : 3 * i + 3]): i for i in range(256)}
    flat = rgb.reshape(-1, 3)
    colours, inverse = np.unique(flat, axis=0, return_inverse=True)
    values = []
    for colour in colours:
        key = tuple(int(c) for c in colour)
        if key not in lookup:
            raise ValueError(f"colour {key} is not in the DAVIS palette")
        values.append(lookup[key])
    return np.asarray(values, dtype=np.uint8)[inverse.reshape(-1)].reshape(rgb.shape[:2])


def object_mask(ids: np.ndarray, object_id: int) -> np.ndarray:
    """Binary (H, W) uint8 mask of one object from an id mask."""
    return (ids == object_id).astype(np.uint8)
