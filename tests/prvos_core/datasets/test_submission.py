"""Tests of prvos_core.datasets.submission: a zip is held against the split's own meta_expressions.json, in the
Ref-YouTube-VOS (`Annotations/<video>/<key>/<frame>.png`) and the MeViS (`<video>/<key>/<frame>.png`) layouts."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from prvos_core.data.source import read_split
from prvos_core.datasets.submission import MEVIS, YOUTUBE_VOS, check_submission, expected_masks, relayout

FRAMES = ["00000", "00005", "00010"]
SIZE = (6, 8)


@pytest.fixture
def split(tmp_path):
    """A valid split without masks: video a (2 expressions), video b (1), listed frames only."""
    videos = {
        "a": {"frames": FRAMES, "expressions": {"0": {"exp": "a cat"}, "1": {"exp": "a dog"}}},
        "b": {"frames": FRAMES[:2], "expressions": {"0": {"exp": "a car"}}},
    }
    folder = tmp_path / "meta_expressions" / "valid"
    folder.mkdir(parents=True)
    (folder / "meta_expressions.json").write_text(json.dumps({"videos": videos}))
    return read_split(tmp_path, "valid")


def _png(shape=SIZE, channels: int = 1) -> bytes:
    image = np.zeros((*shape, channels) if channels > 1 else shape, np.uint8)
    return cv2.imencode(".png", image)[1].tobytes()


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in entries.items():
            bundle.writestr(name, data)
    return path


def test_complete_zip_passes_in_both_layouts(split, tmp_path):
    count, expected = expected_masks(split, YOUTUBE_VOS)
    assert count == 3 and len(expected) == 2 * 3 + 2
    assert "Annotations/a/1/00010.png" in expected
    archive = _zip(tmp_path / "s.zip", {name: _png() for name in expected})
    check = check_submission(archive, split, YOUTUBE_VOS, {"a": SIZE, "b": SIZE})
    assert check.complete and (check.expected, check.found, check.expressions) == (8, 8, 3)
    assert "layout as the benchmark expects" in str(check)
    relayout(archive, tmp_path / "mevis.zip", MEVIS)
    with zipfile.ZipFile(tmp_path / "mevis.zip") as bundle:
        assert sorted(bundle.namelist()) == sorted(name.removeprefix("Annotations/") for name in expected)
    assert check_submission(tmp_path / "mevis.zip", split, MEVIS, {}).complete
    assert not check_submission(tmp_path / "mevis.zip", split, YOUTUBE_VOS, {}).complete  # the other layout


def test_missing_unexpected_and_malformed_masks_are_counted_and_named(split, tmp_path):
    _, expected = expected_masks(split, YOUTUBE_VOS)
    entries = {name: _png() for name in sorted(expected) if name != "Annotations/b/0/00005.png"}
    entries["Annotations/a/0/00000.png"] = _png(channels=3)  # colour, not single-channel
    entries["Annotations/a/1/00000.png"] = _png(shape=(8, 6))  # another size than its frame
    entries["Annotations/a/0/00001.png"] = _png()  # a frame the split does not list
    check = check_submission(_zip(tmp_path / "s.zip", entries), split, YOUTUBE_VOS, {"a": SIZE, "b": SIZE})
    assert (check.missing, check.unexpected, check.malformed, check.found) == (1, 1, 2, 7)
    assert not check.complete
    assert "missing: Annotations/b/0/00005.png" in check.examples
    assert "unexpected: Annotations/a/0/00001.png" in check.examples
    assert any("a/1/00000.png (6x8, its frame is 8x6)" in example for example in check.examples)
    assert "1 missing, 1 unexpected, 2 malformed" in str(check)
