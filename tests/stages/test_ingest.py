"""The ingest stage: every kind of broken item is quarantined with its reason, every good one is kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from prvos_core.config import IngestSection
from prvos_core.data.ids import expression_id
from prvos_core.data.manifest import read_manifest
from prvos_core.data.masks import write_palette_mask
from stages import ingest

H, W = 48, 64


def _frame(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))


def _mask(path: Path, ids: dict[int, tuple[int, int]], shape=(H, W)) -> None:
    mask = np.zeros(shape, np.uint8)
    for object_id, (top, left) in ids.items():
        mask[top : top + 10, left : left + 10] = object_id
    path.parent.mkdir(parents=True, exist_ok=True)
    write_palette_mask(path, mask)


def _good_video(root: Path, vid: str, n: int = 4) -> list[str]:
    frames = [f"{i:05d}" for i in range(n)]
    for i, frame in enumerate(frames):
        _frame(root / "train/JPEGImages" / vid / f"{frame}.jpg", i)
        _mask(root / "train/Annotations" / vid / f"{frame}.png", {1: (5, 5), 2: (20, 30)})
    return frames


def build_broken_dataset(root: Path) -> dict:
    """A small dataset with one broken item of each kind next to good ones; returns what to expect."""
    videos_meta, expressions = {}, {}
    frames = _good_video(root, "good")
    videos_meta["good"] = {
        "objects": {"1": {"category": "cat", "frames": frames}, "2": {"category": "dog", "frames": frames}}
    }
    expressions["good"] = {
        "frames": frames,
        "expressions": {
            "0": {"exp": "the cat on the left", "obj_id": "1"},
            "1": {"exp": "the dog", "obj_id": "2"},
            "2": {"exp": "", "obj_id": "1"},  # empty text
            "3": {"exp": "x" * 600, "obj_id": "1"},  # over-long text
            "4": {"exp": "The  cat on the LEFT", "obj_id": "1"},  # duplicate of 0 (case and spaces)
            "5": {"exp": "a ghost", "obj_id": "3"},  # object in meta.json but in no mask
            "6": {"exp": "a sneaky one", "obj_id": "../1"},  # unsafe object id
            "7": {"exp": "BADTEXT", "obj_id": "2"},  # replaced below by non-UTF-8 bytes
            "8": {"exp": "nobody", "obj_id": "9"},  # object not in meta.json
        },
    }
    videos_meta["good"]["objects"]["3"] = {"category": "ghost", "frames": []}
    # A video whose files are broken one by one.
    frames = _good_video(root, "broken", n=6)
    (root / "train/JPEGImages/broken/00001.jpg").unlink()  # listed but missing on disk
    data = (root / "train/JPEGImages/broken/00002.jpg").read_bytes()
    (root / "train/JPEGImages/broken/00002.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (root / "train/JPEGImages/broken/00003.jpg").write_bytes(b"\xff\xd8" + b"garbage" * 50 + b"\xff\xd9")  # corrupt
    _mask(root / "train/Annotations/broken/00004.png", {1: (5, 5)}, shape=(H, W - 1))  # mask size differs
    _frame(root / "train/JPEGImages/broken/00009.jpg", 9)  # on disk but not listed
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 1] = 77  # a colour that is not in the DAVIS palette
    cv2.imwrite(str(root / "train/Annotations/broken/00005.png"), rgb)
    videos_meta["broken"] = {"objects": {"1": {"category": "cat", "frames": frames}}}
    expressions["broken"] = {"frames": frames, "expressions": {"0": {"exp": "the cat", "obj_id": "1"}}}
    # An unsafe video id.
    expressions["../escape"] = {"frames": ["00000"], "expressions": {"0": {"exp": "x", "obj_id": "1"}}}
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "train/meta.json").write_text(json.dumps({"videos": videos_meta}))
    meta_expressions = root / "meta_expressions/train/meta_expressions.json"
    meta_expressions.parent.mkdir(parents=True)
    text = json.dumps({"videos": expressions}).encode("utf-8").replace(b"BADTEXT", b"caf\xe9 \xff")
    meta_expressions.write_bytes(text)
    return {
        "kept_expressions": {"good/0", "good/1", "broken/0"},
        "reasons": {
            "good/expression 2": "empty",
            "good/expression 3": "more than ingest.max_text_chars=512",
            "good/expression 4": "duplicate of expression 0",
            "good/expression 5": "appears in no usable mask",
            "good/expression 6": "unsafe object id",
            "good/expression 7": "not valid UTF-8",
            "good/expression 8": "not in meta.json",
            "broken/00001.jpg": "missing on disk",
            "broken/00002.jpg": "truncated JPEG",
            "broken/00003.jpg": "corrupt JPEG",
            "broken/00004.png": "mask is 63x48 but its frame is 64x48",
            "broken/00005.png": "outside the DAVIS palette",
            "broken/00009.jpg": "not listed in the JSON",
            "../escape": "unsafe video id",
            "broken/00001.png": "no usable frame",
            "broken/00002.png": "no usable frame",
            "broken/00003.png": "no usable frame",
        },
    }


def test_every_broken_item_is_quarantined_with_its_reason(tmp_path, ray_local):
    expected = build_broken_dataset(tmp_path / "data")
    out = tmp_path / "stage"
    out.mkdir()
    result = ingest.run(
        ingest.IngestInputs(str(tmp_path / "data"), ("train",), str(out)), IngestSection(chunk_frames=4)
    )
    manifest = read_manifest(str(out))
    quarantine = {row.item: row.reason for row in manifest.quarantine}
    for item, reason in expected["reasons"].items():
        assert item in quarantine, f"{item} not quarantined; quarantine: {quarantine}"
        assert reason in quarantine[item], (item, quarantine[item])
    assert len(quarantine) == len(expected["reasons"]), set(quarantine) - set(expected["reasons"])
    kept = {f"{e.video_id}/{e.exp_key}" for e in manifest.expressions}
    assert kept == expected["kept_expressions"]
    broken = manifest.video("broken", "train")
    assert broken.frame_ids == ("00000", "00004", "00005")
    assert broken.annotated_frames == ("00000",)  # 00004 has the wrong size, 00005 the wrong palette
    assert (broken.height, broken.width) == (H, W)
    good = {e.exp_key: e for e in manifest.expressions if e.video_id == "good"}
    assert good["0"].expression_id == expression_id("good", "1", "the cat on the left")
    assert good["0"].gt_frames == ("00000", "00001", "00002", "00003") and good["0"].category == "cat"
    assert result.quarantined == len(expected["reasons"])
    assert result.expressions == 3
    assert pq.read_table(out / "quarantine.parquet").num_rows == len(expected["reasons"])


def test_ingest_of_the_real_clips(shared_data, tmp_path, ray_local):
    out = tmp_path / "stage"
    out.mkdir()
    ingest.run(
        ingest.IngestInputs(str(shared_data / "ref_davis16_mini"), ("train", "valid"), str(out)), IngestSection()
    )
    manifest = read_manifest(str(out))
    by_id = {(v.split, v.video_id): v for v in manifest.videos}
    assert set(by_id) == {
        ("train", "blackswan"), ("train", "breakdance"), ("train", "car-roundabout"), ("train", "cows"),
        ("valid", "dance-twirl"), ("valid", "libby"),
    }  # fmt: skip
    assert [by_id["train", v].n_frames for v in ("blackswan", "breakdance", "car-roundabout", "cows")] == [
        25,
        28,
        25,
        26,
    ]
    assert all((v.height, v.width) == (480, 854) for v in manifest.videos)
    assert all(v.annotated_frames == v.frame_ids for v in manifest.videos)  # dense masks
    swan = next(e for e in manifest.expressions if e.video_id == "blackswan")
    assert (swan.text, swan.category, swan.object_id) == ("a black feathered swan", "bird", "1")
    assert swan.gt_frames == swan.all_frames and swan.all_frames[:3] == ("00000", "00002", "00004")
    assert manifest.quarantine == ()


def test_sparse_real_clip_catches_the_odd_mask_size(shared_data, tmp_path, ray_local):
    out = tmp_path / "stage"
    out.mkdir()
    ingest.run(ingest.IngestInputs(str(shared_data / "cutie_judo_sparse"), ("train",), str(out)), IngestSection())
    manifest = read_manifest(str(out))
    rows = {row.item: row.reason for row in manifest.quarantine}
    assert rows["judo/00005.png"] == "mask is 853x480 but its frame is 854x480"
    # Object 2 is labelled only in that mask, so its expression cannot have ground truth.
    assert "appears in no usable mask" in rows["judo/expression 2"]
    gt = {e.exp_key: e.gt_frames for e in manifest.expressions}
    assert gt == {"0": ("00000",), "1": ("00000",), "3": ("00008",), "4": ("00013",)}
    assert manifest.videos[0].n_frames == 16


def test_merged_json_source_gives_the_same_manifest(shared_data, tmp_path, ray_local):
    root = tmp_path / "davis"
    shutil.copytree(shared_data / "ref_davis16_mini", root)
    videos = json.loads((root / "train/meta.json").read_text())["videos"]
    texts = json.loads((root / "meta_expressions/train/meta_expressions.json").read_text())["videos"]
    merged = {
        vid: {
            "frames": texts[vid]["frames"],
            "objects": {
                oid: {
                    **obj,
                    "expressions": {k: e["exp"] for k, e in texts[vid]["expressions"].items() if e["obj_id"] == oid},
                }
                for oid, obj in entry["objects"].items()
            },
        }
        for vid, entry in videos.items()
    }
    (root / "new_train.json").write_text(json.dumps({"videos": merged}))
    out_layout, out_merged = tmp_path / "a", tmp_path / "b"
    out_layout.mkdir(), out_merged.mkdir()
    shutil.move(root / "meta_expressions", tmp_path / "hidden")
    ingest.run(ingest.IngestInputs(str(root / "new_train.json"), ("train",), str(out_merged)), IngestSection())
    shutil.move(tmp_path / "hidden", root / "meta_expressions")
    (root / "new_train.json").unlink()
    ingest.run(ingest.IngestInputs(str(root), ("train",), str(out_layout)), IngestSection())
    assert read_manifest(str(out_layout)).expressions == read_manifest(str(out_merged)).expressions


def test_missing_dataset_is_one_clear_error(tmp_path, ray_local):
    from prvos_core.errors import DataError

    with pytest.raises(DataError, match="not found"):
        ingest.run(ingest.IngestInputs(str(tmp_path / "nope"), ("train",), str(tmp_path)), IngestSection())
    (tmp_path / "meta_expressions/train").mkdir(parents=True)
    (tmp_path / "meta_expressions/train/meta_expressions.json").write_text('{"videos": {"a": ')
    with pytest.raises(DataError, match="malformed JSON at line 1"):
        ingest.run(ingest.IngestInputs(str(tmp_path), ("train",), str(tmp_path)), IngestSection())


def test_converted_ref_davis_keeps_annotator_and_kind(shared_data, tmp_path, ray_local):
    """convert-davis -> ingest: the same sentence from two annotators or kinds stays two expressions."""
    from prvos_core.datasets.davis import convert_davis
    from tests.prvos_core.datasets.test_davis import _make_davis, _make_text

    davis_root, text_dir = tmp_path / "DAVIS", tmp_path / "text"
    _make_davis(shared_data, davis_root)
    _make_text(text_dir)
    with (text_dir / "Davis17_annot2.txt").open("a", encoding="latin-1") as handle:
        handle.write('blackswan 1 "a black swan on a café pond"\n')  # annotator 1's first-frame sentence again
    convert_davis(davis_root, text_dir, tmp_path / "converted")
    out = tmp_path / "stage"
    out.mkdir()
    ingest.run(ingest.IngestInputs(str(tmp_path / "converted"), ("train", "valid"), str(out)), IngestSection())
    manifest = read_manifest(str(out))
    swan = [e for e in manifest.expressions if e.text == "a black swan on a café pond"]
    assert sorted((e.annotator, e.kind) for e in swan) == [(1, "first_frame"), (2, "first_frame")]
    assert len({e.expression_id for e in swan}) == 2
    assert {e.annotator for e in manifest.expressions} == {1, 2}
    assert {e.kind for e in manifest.expressions} == {"first_frame", "full_video"}
    rows = {row.item: row.reason for row in manifest.quarantine}
    calf = [reason for item, reason in rows.items() if item.startswith("cows/expression")]
    assert calf == ["object 3 is not in meta.json for this video"], rows  # the calf that no mask shows
