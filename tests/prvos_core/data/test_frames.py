"""Frame decoding at a reduced scale: chosen only when the crop still covers the model input."""

from __future__ import annotations

import cv2
import numpy as np

from prvos_core.data.frames import Box, decode_frame, decode_reduction, load_frame, resize_frame


def test_reduction_is_the_largest_that_still_covers_the_crop():
    assert decode_reduction((720, 1280), (128, 128)) == 4
    assert decode_reduction((720, 1280), (128, 128), Box(0.0, 0.0, 0.8, 0.8)) == 4
    assert decode_reduction((720, 1280), (320, 320)) == 2
    assert decode_reduction((720, 1280), (320, 320), Box(0.0, 0.0, 0.8, 0.8)) == 1
    assert decode_reduction((48, 48), (32, 40)) == 1


def test_reduced_decode_is_close_to_the_full_decode_and_resize(tmp_path):
    rng = np.random.default_rng(0)
    # Smooth content (as photographs): a small random image blown up.
    image = cv2.resize(rng.integers(0, 256, (9, 16, 3), dtype=np.uint8), (1280, 720), interpolation=cv2.INTER_CUBIC)
    path = tmp_path / "frame.jpg"
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert decode_frame(str(path), 4).shape == (180, 320, 3)
    box = Box(0.1, 0.2, 0.9, 0.95)
    full = resize_frame(decode_frame(str(path)), (128, 128), box).astype(np.int16)
    reduced = load_frame(str(path), (128, 128), box, (720, 1280)).astype(np.int16)
    assert reduced.shape == full.shape == (3, 128, 128)
    assert np.abs(reduced - full).mean() < 2.0
