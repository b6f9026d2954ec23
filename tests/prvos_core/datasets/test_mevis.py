"""Tests of prvos_core.datasets.mevis on a small MeViS-layout tree made here: frames, meta_expressions.json with
obj_id / anno_id lists (one expression refers to two objects, one names an object with no mask, one has no target)
and mask_dict.json with COCO RLE from pycocotools. Converted, then ingested: the target of the two-object
expression is the union of their masks, bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from prvos_core.config import IngestSection
from prvos_core.data.frames import read_object_mask
from prvos_core.data.layout import SplitPaths
from prvos_core.data.manifest import read_manifest
from prvos_core.data.masks import read_mask
from prvos_core.datasets.mevis import convert_mevis, mevis_splits
from prvos_core.errors import DataError

FRAMES = [f"{i:05d}" for i in range(6)]
SIZE = (40, 56)  # height, width
ANNO = {0: "7", 1: "8"}  # MeViS object number -> anno_id with masks; object 2 is anno_id 9, absent from mask_dict
EXPRESSIONS = {
    "0": {"exp": "the square moving right", "obj_id": [0], "anno_id": [7]},
    "1": {"exp": "the two squares", "obj_id": [1, 0], "anno_id": [8, 7]},
    "2": {"exp": "the square that never shows", "obj_id": [2], "anno_id": [9]},
    "3": {"exp": "nothing moves here", "obj_id": [], "anno_id": []},
}


def object_masks(index: int) -> dict[int, np.ndarray | None]:
    """MeViS object number -> its (H, W) 0/1 mask on frame `index` (None: not in the frame). Object 0 is a square
    moving right; object 1 a bar that it crosses on frames 1 to 3 (the higher number keeps the overlap there) and
    that leaves after frame 3."""
    square = np.zeros(SIZE, np.uint8)
    square[8:20, 4 + 6 * index : 16 + 6 * index] = 1
    bar = None
    if index <= 3:
        bar = np.zeros(SIZE, np.uint8)
        bar[16:36, 20:30] = 1
    return {0: square, 1: bar}


def _rle(mask: np.ndarray) -> dict:
    """COCO RLE as mask_dict.json holds it: counts as text."""
    rle = coco_mask.encode(np.asfortranarray(mask))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def make_mevis(root: Path, splits: tuple[str, ...] = ("train", "valid_u", "valid")) -> Path:
    """A MeViS root with one video per split (`walk_<split>`); `valid` has no mask_dict.json, as MeViS's own."""
    for split in splits:
        video = f"walk_{split}"
        folder = root / split / "JPEGImages" / video
        folder.mkdir(parents=True)
        rng = np.random.default_rng(len(split))
        for index, frame in enumerate(FRAMES):
            picture = rng.integers(0, 60, (*SIZE, 3), dtype=np.uint8)
            for number, mask in object_masks(index).items():
                if mask is not None:
                    picture[mask > 0] = (200, 80 + 100 * number, 40)
            cv2.imwrite(str(folder / f"{frame}.jpg"), picture)
        expressions = EXPRESSIONS
        if split == "valid":  # the online split gives texts only
            expressions = {key: {"exp": item["exp"]} for key, item in EXPRESSIONS.items()}
        payload = {"videos": {video: {"expressions": expressions, "frames": FRAMES}}}
        (root / split / "meta_expressions.json").write_text(json.dumps(payload), encoding="utf-8")
        if split != "valid":
            tracks = {anno: [] for anno in ANNO.values()}
            for index in range(len(FRAMES)):
                for number, mask in object_masks(index).items():
                    tracks[ANNO[number]].append(None if mask is None else _rle(mask))
            (root / split / "mask_dict.json").write_text(json.dumps(tracks), encoding="utf-8")
    return root


@pytest.fixture
def converted(tmp_path):
    summary = convert_mevis(make_mevis(tmp_path / "mevis"), tmp_path / "converted")
    return tmp_path / "converted", summary


def test_convert_writes_palette_masks_meta_and_target_lists(converted):
    out, summary = converted
    paths = SplitPaths(out, "train")
    for index, frame in enumerate(FRAMES):
        ids = read_mask(paths.mask_path("walk_train", frame))
        masks = object_masks(index)
        expected = masks[0].copy()
        if masks[1] is not None:
            expected[masks[1] > 0] = 2
        np.testing.assert_array_equal(ids, expected)
        assert paths.frame_path("walk_train", frame).is_file()
    objects = json.loads(paths.meta.read_text())["videos"]["walk_train"]["objects"]
    assert objects == {
        "1": {"category": None, "frames": FRAMES},
        "2": {"category": None, "frames": FRAMES[:4]},
        "3": {"category": None, "frames": []},
    }
    entry = json.loads(paths.meta_expressions.read_text())["videos"]["walk_train"]
    assert entry["frames"] == FRAMES
    assert {key: item["obj_id"] for key, item in entry["expressions"].items()} == {"0": [1], "1": [1, 2], "2": [3]}
    assert summary.videos == {"train": 1, "valid_u": 1, "valid": 1}
    assert summary.expressions == {"train": 3, "valid_u": 3, "valid": 4}
    assert summary.several_objects == 2  # expression 1 of train and of valid_u
    assert summary.masks == 2 * len(FRAMES) and summary.frames == 3 * len(FRAMES)
    assert summary.without_mask == (
        "train/walk_train/expression 2 (anno_id 9)",
        "valid_u/walk_valid_u/expression 2 (anno_id 9)",
    )
    assert [item.split(": ")[0] for item in summary.left_out] == ["train/walk_train/expression 3"] + [
        "valid_u/walk_valid_u/expression 3"
    ]
    assert "no target" in summary.left_out[0]
    masks = [object_masks(index) for index in range(len(FRAMES))]
    overlap = sum(int(np.count_nonzero(m[0] & m[1])) for m in masks if m[1] is not None)
    assert summary.overlap_pixels == 2 * overlap > 0  # train and valid_u
    assert "name an object with no mask" in str(summary)


def test_online_split_keeps_texts_only(converted):
    out, _ = converted
    paths = SplitPaths(out, "valid")
    assert not paths.meta.exists() and not paths.annotations.exists()
    entry = json.loads(paths.meta_expressions.read_text())["videos"]["walk_valid"]
    assert entry["expressions"] == {key: {"exp": item["exp"]} for key, item in EXPRESSIONS.items()}


def test_ingest_reads_the_union_target_and_quarantines_the_object_without_mask(converted, tmp_path, ray_local):
    from stages import ingest

    out, _ = converted
    manifest_dir = tmp_path / "ingest"
    ingest.run(ingest.IngestInputs(str(out), ("train", "valid"), str(manifest_dir)), IngestSection())
    manifest = read_manifest(str(manifest_dir))
    by_key = {e.exp_key: e for e in manifest.split_expressions("train")}
    assert sorted(by_key) == ["0", "1"]
    assert (by_key["0"].object_id, by_key["1"].object_id) == ("1", "1-2")
    assert by_key["1"].gt_frames == tuple(FRAMES)
    mevis_masks = json.loads((tmp_path / "mevis" / "train" / "mask_dict.json").read_text())
    for index, frame in enumerate(FRAMES):
        # The union as MeViS's own evaluation builds it: the sum of the decoded RLEs of the expression's anno_ids.
        union = sum(coco_mask.decode(mevis_masks[a][index]) for a in ("7", "8") if mevis_masks[a][index]) > 0
        uri = str(SplitPaths(out, "train").mask_path("walk_train", frame))
        np.testing.assert_array_equal(read_object_mask(uri, "1-2"), union.astype(np.uint8))
    reasons = {row.item: row.reason for row in manifest.quarantine}
    assert reasons["walk_train/expression 2"] == "object 3 appears in no usable mask of this video"
    valid = manifest.split_expressions("valid")
    assert len(valid) == 4 and all(e.object_id == "" and not e.gt_frames for e in valid)


def test_raw_mevis_root_given_to_ingest_names_the_converter(tmp_path, ray_local):
    from stages import ingest

    root = make_mevis(tmp_path / "mevis", ("train",))
    with pytest.raises(DataError, match=r"MeViS layout .*prvos data convert-mevis"):
        ingest.run(ingest.IngestInputs(str(root), ("train",), str(tmp_path / "ingest")), IngestSection())


def test_bad_inputs_are_one_clear_line(tmp_path):
    assert mevis_splits(tmp_path / "absent") == []
    with pytest.raises(DataError, match="no MeViS split"):
        convert_mevis(tmp_path, tmp_path / "out")
    root = make_mevis(tmp_path / "mevis", ("train",))
    tracks = json.loads((root / "train" / "mask_dict.json").read_text())
    tracks["8"] = tracks["8"][:-1]
    (root / "train" / "mask_dict.json").write_text(json.dumps(tracks))
    with pytest.raises(DataError, match="anno_id 8 has 5 frames but video walk_train lists 6") as error:
        convert_mevis(root, tmp_path / "out")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()  # nothing half-written
    tracks["8"] = [{"size": [40, 56], "counts": 17}] * len(FRAMES)
    (root / "train" / "mask_dict.json").write_text(json.dumps(tracks))
    with pytest.raises(DataError, match="anno_id 8, frame 0: not a COCO RLE"):
        convert_mevis(root, tmp_path / "out")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        convert_mevis(root, tmp_path / "taken")
