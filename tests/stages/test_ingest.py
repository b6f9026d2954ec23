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


def _unlabelled_video(root: Path, split: str, vid: str, n: int = 3, masks: bool = False) -> list[str]:
    frames = [f"{i:05d}" for i in range(n)]
    for i, frame in enumerate(frames):
        _frame(root / split / "JPEGImages" / vid / f"{frame}.jpg", 100 + i)
        if masks:
            _mask(root / split / "Annotations" / vid / f"{frame}.png", {1: (5, 5)})
    return frames


def build_unlabelled_split(root: Path, split: str = "unlabelled") -> dict:
    """A split of unlabelled videos (frames and expressions; no meta.json) with one bad video of each kind."""
    videos = {}
    # Masks on disk are ignored, and so is the object no mask shows (there is none to show it).
    frames = _unlabelled_video(root, split, "u_good", masks=True)
    videos["u_good"] = {
        "frames": frames,
        "expressions": {"0": {"exp": "the cat", "obj_id": "1"}, "1": {"exp": "a ghost", "obj_id": "7"}},
    }
    frames = _unlabelled_video(root, split, "u_corrupt", n=4)
    (root / split / "JPEGImages/u_corrupt/00002.jpg").write_bytes(b"\xff\xd8" + b"garbage" * 50 + b"\xff\xd9")
    videos["u_corrupt"] = {"frames": frames, "expressions": {"0": {"exp": "the dog", "obj_id": "1"}}}
    videos["u_silent"] = {"frames": _unlabelled_video(root, split, "u_silent"), "expressions": {}}
    frames = _unlabelled_video(root, split, "u_blank")
    videos["u_blank"] = {"frames": frames, "expressions": {"0": {"exp": "   ", "obj_id": "1"}}}
    # The id of a labelled train video.
    videos["good"] = {
        "frames": _unlabelled_video(root, split, "good"),
        "expressions": {"0": {"exp": "x", "obj_id": "1"}},
    }
    meta_expressions = root / "meta_expressions" / split / "meta_expressions.json"
    meta_expressions.parent.mkdir(parents=True, exist_ok=True)
    meta_expressions.write_text(json.dumps({"videos": videos}))
    return {
        "kept": {"u_good": ("00000", "00001", "00002"), "u_corrupt": ("00000", "00001", "00003")},
        "reasons": {
            "u_corrupt/00002.jpg": "corrupt JPEG",
            "u_silent": "unlabelled video has no expression",
            "u_blank/expression 0": "expression text is empty",
            "u_blank": "unlabelled video has no usable expression",
            "good": "video id is already a labelled video of split 'train'",
        },
    }


def _labelled_train(root: Path) -> None:
    frames = _good_video(root, "good")
    (root / "train/meta.json").write_text(
        json.dumps({"videos": {"good": {"objects": {"1": {"category": "cat", "frames": frames}, "5": {}}}}})
    )
    meta_expressions = root / "meta_expressions/train/meta_expressions.json"
    meta_expressions.parent.mkdir(parents=True)
    texts = {"0": {"exp": "the cat on the left", "obj_id": "1"}, "1": {"exp": "the hidden one", "obj_id": "5"}}
    meta_expressions.write_text(json.dumps({"videos": {"good": {"frames": frames, "expressions": texts}}}))


def test_unlabelled_split_joins_train_without_masks(tmp_path, ray_local):
    root = tmp_path / "data"
    _labelled_train(root)
    expected = build_unlabelled_split(root)
    out = tmp_path / "stage"
    out.mkdir()
    inputs = ingest.IngestInputs(str(root), ("train",), str(out), unlabelled_split="unlabelled")
    result = ingest.run(inputs, IngestSection(chunk_frames=4))
    manifest = read_manifest(str(out))
    kept = {video.video_id: video for video in manifest.videos if not video.labelled}
    assert {vid: video.frame_ids for vid, video in kept.items()} == expected["kept"]
    for video in kept.values():
        assert (video.split, video.folder, video.dataset_root, video.annotated_frames) == (
            "train", "unlabelled", str(root), ()
        )  # fmt: skip
        assert video.paths.frame_path(video.video_id, "00000").is_file()
    assert manifest.video("good", "train").labelled and manifest.video("good", "train").folder == ""
    unlabelled = [e for e in manifest.split_expressions("train") if e.video_id in kept]
    assert sorted((e.video_id, e.text) for e in unlabelled) == [
        ("u_corrupt", "the dog"), ("u_good", "a ghost"), ("u_good", "the cat")
    ]  # fmt: skip
    assert all(e.gt_frames == () and e.hidden_frames == () for e in unlabelled)
    rows = {row.item: row for row in manifest.quarantine}
    for item, reason in expected["reasons"].items():
        assert reason in rows[item].reason, (item, rows[item])
    assert rows["u_corrupt/00002.jpg"].source == str(root / "unlabelled/JPEGImages/u_corrupt/00002.jpg")
    # The labelled rule stays: an expression naming an object that no mask of its video shows.
    assert "object 5 appears in no usable mask of this video" in rows["good/expression 1"].reason
    assert len(rows) == len(expected["reasons"]) + 1, rows
    assert (result.unlabelled_videos, result.videos, result.hidden_frames) == (2, 3, 0)


def test_unlabelled_split_of_another_root_and_a_missing_one(tmp_path, ray_local):
    from prvos_core.errors import DataError

    root, other = tmp_path / "data", tmp_path / "other"
    _labelled_train(root)
    build_unlabelled_split(other, split="extra")
    out = tmp_path / "stage"
    out.mkdir()
    inputs = ingest.IngestInputs(str(root), ("train",), str(out), unlabelled_split="extra", unlabelled_root=str(other))
    ingest.run(inputs, IngestSection())
    videos = {v.video_id: v for v in read_manifest(str(out)).videos if not v.labelled}
    assert set(videos) == {"u_good", "u_corrupt"}
    assert {(v.dataset_root, v.folder) for v in videos.values()} == {(str(other), "extra")}
    missing = ingest.IngestInputs(str(root), ("train",), str(out), unlabelled_split="nope")
    with pytest.raises(DataError) as error:
        ingest.run(missing, IngestSection())
    message = str(error.value)
    assert "data.unlabelled_split 'nope'" in message and "\n" not in message
    assert str(root / "meta_expressions/nope/meta_expressions.json") in message
    assert str(root / "new_nope.json") in message


def test_label_regime_applies_to_the_train_split_only(tmp_path, ray_local):
    from prvos_core.datasets.synth import generate_synthetic

    generate_synthetic(tmp_path / "data", videos=2, valid_videos=1, frames=6, size=(32, 32), label_every=1, seed=2)
    outs = {}
    for regime in ("provided", "first"):
        outs[regime] = tmp_path / regime
        outs[regime].mkdir()
        inputs = ingest.IngestInputs(str(tmp_path / "data"), ("train", "valid"), str(outs[regime]), train_labels=regime)
        result = ingest.run(inputs, IngestSection())
    provided, first = (read_manifest(str(outs[r])) for r in ("provided", "first"))
    before = {e.expression_id: e for e in provided.expressions}
    for expression in first.split_expressions("train"):
        full = before[expression.expression_id].gt_frames
        assert len(expression.gt_frames) == 1 and expression.gt_frames == full[:1]
        assert expression.hidden_frames == full[1:]
    assert first.split_expressions("valid") == provided.split_expressions("valid")
    assert first.videos == provided.videos
    assert result.hidden_frames == sum(len(e.hidden_frames) for e in first.expressions) > 0
