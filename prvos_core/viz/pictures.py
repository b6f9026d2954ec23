"""Pictures of frames, masks and pseudo-labels for people: colour maps, overlays and labelled strips.

Everything is an RGB (H, W, 3) uint8 array, drawn with NumPy and OpenCV only, so the same code serves the
`prvos inspect` report and the `prvos predict` overlay video. Colours are chosen to stay apart from each
other: the teacher's probability in viridis, its uncertainty in inferno, refined labels in three flat colours
with ignored pixels hatched (so "ignore" never looks like background).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from prvos_core.labels import IGNORE_LABEL

RGB = tuple[int, int, int]

BACKGROUND: RGB = (40, 44, 52)  # refined label 0
OBJECT: RGB = (255, 170, 40)  # refined label 1, and mask overlays
IGNORE_DARK: RGB = (120, 40, 150)  # ignored pixels: stripes of these two
IGNORE_LIGHT: RGB = (225, 205, 235)
GROUND_TRUTH: RGB = (40, 220, 120)  # ground-truth mask overlays
EMPTY: RGB = (70, 70, 70)  # a panel with nothing to show (e.g. no mask on this frame)
TEXT: RGB = (20, 20, 20)

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_HATCH_PERIOD = 6  # pixels between ignore stripes


def panel_size(height: int, width: int, panel_height: int) -> tuple[int, int]:
    """(h, w) of a panel `panel_height` pixels high with the aspect ratio of an (height, width) frame."""
    return panel_height, max(1, int(round(panel_height * width / height)))


def fit_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W, 3) frame resized to `size` (h, w): area averaging when shrinking, bilinear when growing."""
    interpolation = cv2.INTER_AREA if frame.shape[0] > size[0] else cv2.INTER_LINEAR
    return cv2.resize(frame, (size[1], size[0]), interpolation=interpolation)


def fit_map(values: np.ndarray, size: tuple[int, int], *, nearest: bool) -> np.ndarray:
    """An (h, w) map resized to `size`: nearest for labels (they stay labels), bilinear for probabilities."""
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(values, (size[1], size[0]), interpolation=interpolation)


def colorize(values: np.ndarray, colormap: int = cv2.COLORMAP_VIRIDIS) -> np.ndarray:
    """(H, W) floats in [0, 1] -> (H, W, 3) RGB through an OpenCV colour map (NaN counts as 0)."""
    scaled = np.round(np.clip(np.nan_to_num(values.astype(np.float32)), 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(scaled, colormap), cv2.COLOR_BGR2RGB)


def probability_picture(prob: np.ndarray) -> np.ndarray:
    """The teacher's foreground probability (H, W) in [0, 1], viridis: dark blue 0, yellow 1."""
    return colorize(prob, cv2.COLORMAP_VIRIDIS)


def uncertainty_picture(uncertainty: np.ndarray) -> np.ndarray:
    """Normalised uncertainty (H, W) in [0, 1], inferno: black certain, bright yellow maximally unsure."""
    return colorize(uncertainty, cv2.COLORMAP_INFERNO)


def _hatch(shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool diagonal stripes, True on the dark stripe."""
    rows, cols = np.indices(shape)
    return ((rows + cols) // (_HATCH_PERIOD // 2)) % 2 == 0


def _paint_ignored(picture: np.ndarray, ignored: np.ndarray) -> np.ndarray:
    stripes = _hatch(ignored.shape)
    picture[ignored & stripes] = IGNORE_DARK
    picture[ignored & ~stripes] = IGNORE_LIGHT
    return picture


def label_picture(label: np.ndarray) -> np.ndarray:
    """A refined label map (H, W) uint8: 0 background (dark), 1 object (orange), 255 ignore (purple hatching)."""
    picture = np.empty((*label.shape, 3), dtype=np.uint8)
    picture[:] = BACKGROUND
    picture[label == 1] = OBJECT
    return _paint_ignored(picture, label == IGNORE_LABEL)


def weight_picture(weight: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Loss weights (H, W) in [0, 1] in grey (white = 1), ignored pixels hatched as in `label_picture`."""
    grey = np.round(np.clip(weight, 0.0, 1.0) * 255).astype(np.uint8)
    return _paint_ignored(np.repeat(grey[..., None], 3, axis=2), label == IGNORE_LABEL)


def overlay_mask(frame: np.ndarray, mask: np.ndarray, color: RGB = OBJECT, alpha: float = 0.45) -> np.ndarray:
    """The frame (H, W, 3) with a {0, 1} mask (H, W) tinted in `color` and outlined."""
    inside = mask.astype(bool)
    tinted = cv2.addWeighted(frame, 1 - alpha, np.full_like(frame, color), alpha, 0)
    picture = np.where(inside[..., None], tinted, frame)
    contours, _ = cv2.findContours(inside.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(min(frame.shape[:2]) / 240))
    cv2.drawContours(picture, contours, -1, color, thickness)
    return picture


def empty_panel(size: tuple[int, int], text: str = "") -> np.ndarray:
    """A flat grey panel, with a short centred note (e.g. 'no mask')."""
    picture = np.empty((*size, 3), dtype=np.uint8)
    picture[:] = EMPTY
    if text:
        scale = 0.35
        (width, height), _ = cv2.getTextSize(text, _FONT, scale, 1)
        origin = (max(0, (size[1] - width) // 2), (size[0] + height) // 2)
        cv2.putText(picture, text, origin, _FONT, scale, (200, 200, 200), 1, cv2.LINE_AA)
    return picture


@dataclass(frozen=True)
class Column:
    """One frame of a strip: its title (the frame id) and the colour of its header bar (why it is there)."""

    title: str
    color: RGB


def strip(rows: Sequence[tuple[str, Sequence[np.ndarray]]], columns: Sequence[Column], *,
          label_width: int = 120, header_height: int = 18, gap: int = 2) -> np.ndarray:  # fmt: skip
    """A grid picture: one row per (name, panels), one column per frame, a coloured header bar per column
    with its title, the row names on the left. Every panel is (h, w, 3) uint8, the same (h, w) for all.

    Size: height header_height + R * (h + gap), width label_width + C * (w + gap).
    """
    if not rows or not columns:
        raise ValueError("a strip needs at least one row and one column")
    h, w = rows[0][1][0].shape[:2]
    for name, panels in rows:
        if len(panels) != len(columns):
            raise ValueError(f"row {name!r} has {len(panels)} panels for {len(columns)} columns")
        if any(panel.shape != (h, w, 3) for panel in panels):
            raise ValueError(f"row {name!r}: every panel must be ({h}, {w}, 3) uint8")
    shape = (header_height + len(rows) * (h + gap), label_width + len(columns) * (w + gap), 3)
    # Light grey, not white: a panel of white (weight 1 everywhere) still shows its edges.
    canvas = np.full(shape, 230, np.uint8)
    for c, column in enumerate(columns):
        left = label_width + c * (w + gap)
        canvas[: header_height - gap, left : left + w] = column.color
        _put_text(canvas, column.title, (left + 3, header_height - gap - 4), max_width=w - 4, color=(255, 255, 255))
    for r, (name, panels) in enumerate(rows):
        top = header_height + r * (h + gap)
        _put_text(canvas, name, (4, top + h // 2 + 4), max_width=label_width - 8, color=TEXT)
        for c, panel in enumerate(panels):
            left = label_width + c * (w + gap)
            canvas[top : top + h, left : left + w] = panel
    return canvas


def _put_text(canvas: np.ndarray, text: str, origin: tuple[int, int], *, max_width: int, color: RGB) -> None:
    """Draw one line of text, shrinking it (then cutting it) until it fits in `max_width` pixels."""
    scale = 0.4
    while scale > 0.25 and cv2.getTextSize(text, _FONT, scale, 1)[0][0] > max_width:
        scale -= 0.05
    while len(text) > 1 and cv2.getTextSize(text, _FONT, scale, 1)[0][0] > max_width:
        text = text[:-1]
    cv2.putText(canvas, text, origin, _FONT, scale, color, 1, cv2.LINE_AA)


def write_png(path, picture: np.ndarray) -> None:
    """Write an RGB picture as PNG; OSError if the file cannot be written."""
    if not cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"cannot write {path}")
