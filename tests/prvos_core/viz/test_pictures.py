"""Pictures for people: colours stay apart, strips have the promised geometry, columns keep kept frames."""

from __future__ import annotations

import numpy as np
import pytest

from prvos_core.pseudo.store import FrameDecision
from prvos_core.viz.pictures import (
    BACKGROUND,
    IGNORE_DARK,
    IGNORE_LIGHT,
    OBJECT,
    Column,
    label_picture,
    overlay_mask,
    probability_picture,
    strip,
    uncertainty_picture,
    weight_picture,
)
from prvos_core.viz.strip import choose_columns, column_title, pseudo_label_strip


def _colors(picture: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(int(c) for c in color) for color in np.unique(picture.reshape(-1, 3), axis=0)}


def test_label_picture_shows_background_object_and_ignore_apart():
    label = np.zeros((12, 12), np.uint8)
    label[:, 4:8] = 1
    label[:, 8:] = 255
    picture = label_picture(label)
    assert _colors(picture[:, :4]) == {BACKGROUND}
    assert _colors(picture[:, 4:8]) == {OBJECT}
    assert _colors(picture[:, 8:]) == {IGNORE_DARK, IGNORE_LIGHT}  # hatched, never mistaken for background
    hatched = weight_picture(np.ones((12, 12), np.float32), label)
    assert _colors(hatched[:, :8]) == {(255, 255, 255)} and _colors(hatched[:, 8:]) == {IGNORE_DARK, IGNORE_LIGHT}


def test_colour_maps_are_monotone_in_brightness():
    ramp = np.linspace(0, 1, 11, dtype=np.float32)[None, :]
    for picture in (probability_picture(ramp), uncertainty_picture(ramp)):
        brightness = picture.astype(float).sum(axis=2)[0]
        assert picture.shape == (1, 11, 3) and picture.dtype == np.uint8
        assert brightness[-1] > brightness[0] + 200


def test_overlay_tints_the_mask_only():
    frame = np.full((40, 60, 3), 100, np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 20:40] = 1
    picture = overlay_mask(frame, mask)
    assert (picture[:5, :5] == 100).all()
    assert not np.array_equal(picture[20, 30], frame[20, 30])


def test_strip_geometry_and_headers():
    panels = [np.full((20, 30, 3), value, np.uint8) for value in (10, 200)]
    columns = [Column("00001 #1", (40, 150, 70)), Column("00002 x", (190, 70, 70))]
    picture = strip([("a", panels), ("b", panels)], columns, label_width=50, header_height=18, gap=2)
    assert picture.shape == (18 + 2 * 22, 50 + 2 * 32, 3)
    assert tuple(picture[1, 50 + 30 - 1]) == (40, 150, 70)  # the header bar's right edge, past the title
    assert (picture[18 : 18 + 20, 50 : 50 + 30] == 10).all() and (picture[40:60, 82:112] == 200).all()
    with pytest.raises(ValueError, match="panels"):
        strip([("a", panels[:1])], columns)


def _row(frame_index: int, source: str, kept: bool, rank: int | None) -> FrameDecision:
    return FrameDecision(frame_index, source, kept, rank, 0.1, 1.0, "why")


def test_choose_columns_keeps_every_kept_frame_and_the_limit():
    rows = [_row(t, "pseudo_label", t in (3, 17, 28), t) for t in range(30)]
    chosen = choose_columns(rows, 8)
    assert len(chosen) == 8 and chosen == sorted(set(chosen))
    assert {3, 17, 28} <= set(chosen)
    assert choose_columns(rows[:5], 8) == [0, 1, 2, 3, 4]


def test_pseudo_label_strip_rows_and_columns():
    frames = [np.full((48, 64, 3), 120, np.uint8) for _ in range(3)]
    prob = np.stack([np.full((16, 16), p, np.float32) for p in (0.1, 0.5, 0.9)])
    label = np.stack([np.zeros((16, 16), np.uint8), np.full((16, 16), 255, np.uint8), np.ones((16, 16), np.uint8)])
    rows = [
        _row(0, "ground_truth", True, None),
        _row(1, "pseudo_label", False, 2),
        _row(2, "pseudo_label", True, 1),
    ]
    frame_ids = ["00000", "00001", "00002"]
    assert [column_title(f, d) for f, d in zip(frame_ids, rows, strict=True)] == ["00000 GT", "00001 #2 x", "00002 #1"]
    picture = pseudo_label_strip(
        frames,
        {0: np.ones((48, 64), np.uint8)},
        prob,
        prob,
        label,
        np.ones_like(prob),
        rows,
        frame_ids,
        panel_height=30,
    )
    width = 40  # 30 * 64 / 48
    assert picture.shape == (18 + 6 * 32, 120 + 3 * (width + 2), 3)
    refined_row = 18 + 4 * 32
    rejected = picture[refined_row : refined_row + 30, 120 + width + 2 : 120 + 2 * width + 2]
    assert _colors(rejected) == {IGNORE_DARK, IGNORE_LIGHT}
