"""Tests of the synthetic RVOS dataset: determinism, layout, sparse/dense masks, expressions, scene content."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from prvos_core.data.layout import SplitPaths, read_json, write_json
from prvos_core.data.masks import read_mask
from prvos_core.datasets.synth import generate_synthetic, video_rng
from prvos_core.datasets.synth_scene import COLOURS, MOTIONS, SHAPES, SIZES, plan_video, render_frame
from prvos_core.errors import ConfigError

ARGS = {"videos": 3, "valid_videos": 2, "frames": 10, "size": (48, 40), "label_every": 3, "seed": 0}
FRAME_IDS = [f"{t:05d}" for t in range(10)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_synthetic(root, **ARGS)
    return root


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def scenes(split: str, count: int) -> dict[str, object]:
    prefix = "synth" if split == "train" else "synthv"
    return {
        f"{prefix}{index:04d}": plan_video(video_rng(ARGS["seed"], split, index), ARGS["frames"], ARGS["size"])
        for index in range(count)
    }


def test_same_seed_gives_identical_tree_and_other_seed_differs(dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    other = tmp_path / "other"
    generate_synthetic(again, **ARGS)
    generate_synthetic(other, **{**ARGS, "seed": 1})
    reference = tree_hashes(dataset)
    assert len(reference) > 50
    assert tree_hashes(again) == reference
    other_hashes = tree_hashes(other)
    jpegs = [name for name in reference if name.endswith(".jpg")]
    assert set(jpegs) <= set(other_hashes)
    assert all(other_hashes[name] != reference[name] for name in jpegs)
    assert read_json(other / "meta_expressions/train/meta_expressions.json") != read_json(
        dataset / "meta_expressions/train/meta_expressions.json"
    )


def test_layout_and_json_structure(dataset: Path) -> None:
    assert sorted(p.name for p in dataset.iterdir()) == ["meta_expressions", "synth.json", "train", "valid"]
    for split, videos in (("train", ["synth0000", "synth0001", "synth0002"]), ("valid", ["synthv0000", "synthv0001"])):
        paths = SplitPaths(dataset, split)
        assert sorted(p.name for p in paths.images.iterdir()) == videos
        meta = read_json(paths.meta)
        expressions = read_json(paths.meta_expressions)
        assert sorted(meta["videos"]) == videos == sorted(expressions["videos"])
        for vid in videos:
            assert sorted(p.stem for p in (paths.images / vid).glob("*.jpg")) == FRAME_IDS
            image = cv2.imread(str(paths.frame_path(vid, "00000")))
            assert image.shape == (48, 40, 3)
            objects = meta["videos"][vid]["objects"]
            assert 3 <= len(objects) <= 4
            assert sorted(objects) == [str(i) for i in range(1, len(objects) + 1)]
            assert all(obj["category"] in SHAPES for obj in objects.values())
            entry = expressions["videos"][vid]
            assert entry["frames"] == FRAME_IDS
            assert list(entry["expressions"]) == [str(i) for i in range(len(entry["expressions"]))]
            assert all(set(e) == {"exp", "obj_id"} for e in entry["expressions"].values())


def test_train_masks_sparse_valid_dense_and_full_annotations_match(dataset: Path) -> None:
    train = SplitPaths(dataset, "train")
    for vid in ["synth0000", "synth0001", "synth0002"]:
        assert sorted(p.stem for p in (train.annotations / vid).iterdir()) == ["00000", "00003", "00006", "00009"]
        assert sorted(p.stem for p in (train.full_annotations / vid).iterdir()) == FRAME_IDS
        for fid in ["00000", "00003", "00006", "00009"]:
            np.testing.assert_array_equal(
                read_mask(train.mask_path(vid, fid)), read_mask(train.full_annotations / vid / f"{fid}.png")
            )
    valid = SplitPaths(dataset, "valid")
    assert not valid.full_annotations.exists()
    for vid in ["synthv0000", "synthv0001"]:
        assert sorted(p.stem for p in (valid.annotations / vid).iterdir()) == FRAME_IDS


def test_masks_are_palette_pngs_and_meta_frames_list_visible_annotated_frames(dataset: Path) -> None:
    for split in ("train", "valid"):
        paths = SplitPaths(dataset, split)
        meta = read_json(paths.meta)
        for vid, video in meta["videos"].items():
            seen: dict[str, list[str]] = {oid: [] for oid in video["objects"]}
            for png in sorted((paths.annotations / vid).iterdir()):
                with Image.open(png) as image:
                    assert image.mode == "P"
                    assert image.size == (40, 48)
                ids = read_mask(png)
                present = {str(v) for v in np.unique(ids) if v}
                assert present <= set(video["objects"])
                for oid in present:
                    seen[oid].append(png.stem)
            assert {oid: obj["frames"] for oid, obj in video["objects"].items()} == seen
            assert all(frames for frames in seen.values()), "every object is visible on some annotated frame"


def test_expressions_name_existing_objects_and_are_unique(dataset: Path) -> None:
    for split, count in (("train", 3), ("valid", 2)):
        meta = read_json(SplitPaths(dataset, split).meta)
        expressions = read_json(SplitPaths(dataset, split).meta_expressions)
        for vid, scene in scenes(split, count).items():
            entries = expressions["videos"][vid]["expressions"].values()
            texts = [e["exp"] for e in entries]
            assert len(set(texts)) == len(texts)
            assert {e["obj_id"] for e in entries} == set(meta["videos"][vid]["objects"])
            per_object = {oid: sum(e["obj_id"] == oid for e in entries) for oid in meta["videos"][vid]["objects"]}
            assert all(2 <= n <= 3 for n in per_object.values())
            triples = [(o.colour, o.shape, o.size) for o in scene.objects]
            assert len(set(triples)) == len(triples)
            for entry in entries:
                # Read the attribute words back from the text; they must fit the named object and no other.
                words = set(re.findall(r"[a-z]+", entry["exp"]))
                matching = [
                    o.object_id
                    for o in scene.objects
                    if all(
                        value in words or not words & set(vocabulary)
                        for value, vocabulary in (
                            (o.colour, COLOURS),
                            (o.shape, SHAPES),
                            (o.size, SIZES),
                            (o.motion, MOTIONS),
                        )
                    )
                ]
                assert matching == [int(entry["obj_id"])], entry["exp"]


def test_scene_matches_disk_and_has_distractors_occlusion_colours_and_motion(dataset: Path) -> None:
    train = SplitPaths(dataset, "train")
    occluded = 0
    for vid, scene in scenes("train", 3).items():
        categories = {str(o.object_id): o.shape for o in scene.objects}
        assert {k: v["category"] for k, v in read_json(train.meta)["videos"][vid]["objects"].items()} == categories
        colours = [o.colour for o in scene.objects]
        shapes = [o.shape for o in scene.objects]
        assert len(set(colours)) < len(colours) and len(set(shapes)) < len(shapes), "colour and shape distractors"
        rendered = [render_frame(scene, t) for t in range(ARGS["frames"])]
        for t, frame in enumerate(rendered):
            labels = read_mask(train.full_annotations / vid / f"{t:05d}.png")
            np.testing.assert_array_equal(labels, frame.labels)
            visible = np.bincount(labels.ravel(), minlength=len(scene.objects) + 1)[1:]
            whole = frame.shapes.sum(axis=(1, 2))
            assert np.all(visible <= whole)
            occluded += int(np.sum(visible < whole))
            image = cv2.imread(str(train.frame_path(vid, f"{t:05d}")))[..., ::-1].astype(float)
            for obj in scene.objects:
                inside = cv2.erode((labels == obj.object_id).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
                if inside.sum() >= 10:
                    assert np.abs(image[inside].mean(axis=0) - COLOURS[obj.colour]).max() < 35, (vid, t, obj.colour)
        side = min(ARGS["size"])
        for obj in scene.objects:
            assert rendered[0].shapes[obj.object_id - 1].sum() >= (0.08 * side) ** 2
            first, last = (np.argwhere(f.shapes[obj.object_id - 1]).mean(axis=0)[::-1] for f in rendered[::9])
            step = np.array(MOTIONS[obj.motion])
            assert (last - first) @ step > 3.0, (vid, obj.motion)
            assert abs((last - first) @ step[::-1]) < 1.0, "moves along one axis only"
    assert occluded > 0


def test_summary_counts_progress_and_reuse(dataset: Path, tmp_path: Path) -> None:
    calls = []
    root = tmp_path / "fresh"
    root.mkdir()  # an existing empty folder is fine
    summary = generate_synthetic(root, **ARGS, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 5) for i in range(1, 6)]
    assert (summary.train_videos, summary.valid_videos, summary.frames) == (3, 2, 50)
    assert summary.masks == len(list(root.glob("*/Annotations/*/*.png"))) == 3 * 4 + 2 * 10
    assert summary.full_masks == len(list(root.glob("train/full_annotations/*/*.png"))) == 30
    texts = sum(
        len(v["expressions"])
        for s in ("train", "valid")
        for v in read_json(SplitPaths(root, s).meta_expressions)["videos"].values()
    )
    assert summary.expressions == texts
    assert not summary.reused
    assert [p.name for p in tmp_path.iterdir()] == ["fresh"], "no staging folder left behind"

    stamp = (root / "train/JPEGImages/synth0000/00000.jpg").stat().st_mtime_ns
    again = generate_synthetic(root, **ARGS, progress=lambda done, total: calls.append((done, total)))
    assert again.reused and len(calls) == 5
    assert (again.frames, again.masks, again.expressions) == (summary.frames, summary.masks, summary.expressions)
    assert (root / "train/JPEGImages/synth0000/00000.jpg").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="other arguments"):
        generate_synthetic(root, **{**ARGS, "seed": 5})


def test_refuses_foreign_folder_and_leaves_nothing_after_failure(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        generate_synthetic(foreign, **ARGS)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    def interrupt(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(tmp_path / "broken", **ARGS, progress=interrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign"]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"videos": 0}, "videos"),
        ({"valid_videos": 0}, "valid_videos"),
        ({"frames": 1}, "frames"),
        ({"size": (8, 48)}, "size"),
        ({"size": (48,)}, "size"),
        ({"label_every": 0}, "label_every"),
        ({"seed": -1}, "seed"),
        ({"videos": 2.5}, "videos"),
    ],
)
def test_bad_arguments_raise_config_error(tmp_path: Path, override: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=rf"\b{named} must") as error:
        generate_synthetic(tmp_path / "out", **{**ARGS, **override})
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_varied_dynamics_change_each_object_between_frames_and_keep_its_description_true(tmp_path: Path) -> None:
    """'varied': objects sway, pulse, turn and shade between frames, yet every expression stays true: sizes stay
    apart, squares and diamonds do not turn into each other, colours keep their name, motion keeps its axis."""
    side, frames = 96, 16
    changed = {"pulse": 0, "turn": 0, "shade": 0, "sway": 0}
    for index in range(6):
        linear = plan_video(video_rng(3, "train", index), frames, (side, side))
        varied = plan_video(video_rng(3, "train", index), frames, (side, side), "varied")
        # The same draws before the waves: the varied scene is the linear one plus waves (when its first plan passed).
        assert [o.shape for o in varied.objects] == [o.shape for o in linear.objects]
        for obj in varied.objects:
            times = np.arange(frames)
            half = np.array([obj.half_size_at(t) for t in times]) / side
            if obj.size == "small":
                assert half.max() <= 0.0921
            else:
                assert half.min() >= 0.1105
            turn = np.abs([obj.turn.at(t) for t in times])
            assert turn.max() <= (0.46 if obj.shape == "triangle" else 0.171)
            assert obj.shape != "circle" or turn.max() == 0.0
            changed["pulse"] += half.max() / half.min() > 1.1
            changed["turn"] += turn.max() > 0.05
            changed["sway"] += abs(obj.sway.amplitude) >= 0.03 * side
            shades = np.array([obj.colour_at(t) for t in times])
            changed["shade"] += np.ptp(shades.max(axis=1)) > 30
            # The colour keeps its name: the nearest named colour (by direction in RGB) is its own on every frame.
            names = list(COLOURS)
            unit = np.array([COLOURS[n] for n in names], dtype=float)
            unit /= np.linalg.norm(unit, axis=1, keepdims=True)
            nearest = {names[i] for i in (shades / np.linalg.norm(shades, axis=1, keepdims=True) @ unit.T).argmax(1)}
            assert nearest == {obj.colour}
        rendered = [render_frame(varied, t) for t in range(frames)]
        for obj in varied.objects:
            centres = np.array([np.argwhere(f.shapes[obj.object_id - 1]).mean(axis=0)[::-1] for f in rendered])
            step = np.array(MOTIONS[obj.motion])
            assert (centres[-1] - centres[0]) @ step > 5.0, "still moving along its named direction"
            assert np.all(np.abs(np.diff(centres, axis=0) @ step) < 8.0)
    assert all(count >= 12 for count in changed.values()), changed


def test_varied_dataset_differs_from_linear_and_old_records_count_as_linear(tmp_path: Path, dataset: Path) -> None:
    varied = tmp_path / "varied"
    generate_synthetic(varied, **ARGS, dynamics="varied")
    assert read_json(varied / "synth.json")["arguments"]["dynamics"] == "varied"
    assert (
        tree_hashes(varied)["train/JPEGImages/synth0000/00005.jpg"]
        != tree_hashes(dataset)["train/JPEGImages/synth0000/00005.jpg"]
    )
    with pytest.raises(ConfigError, match="other arguments"):
        generate_synthetic(varied, **ARGS)
    with pytest.raises(ConfigError, match=r"dynamics must be one of linear, varied \(got 'wavy'\)"):
        generate_synthetic(tmp_path / "wavy", **ARGS, dynamics="wavy")
    # A dataset written before `dynamics` existed (no such key in synth.json) is a linear one and is reused.
    old = tmp_path / "old"
    generate_synthetic(old, **ARGS)
    record = read_json(old / "synth.json")
    del record["arguments"]["dynamics"]
    write_json(old / "synth.json", record)
    assert generate_synthetic(old, **ARGS).reused


def test_unlabelled_split_has_frames_expressions_and_only_hidden_masks(dataset: Path, tmp_path: Path) -> None:
    """unlabelled_videos=2: a split `unlabelled` of new scenes (own seeds) with expressions, no Annotations/ and
    no meta.json, every frame's mask in full_annotations/; the train and valid splits stay byte for byte."""
    root = tmp_path / "with_unlabelled"
    summary = generate_synthetic(root, **ARGS, unlabelled_videos=2)
    assert (summary.unlabelled_videos, summary.frames, summary.full_masks) == (2, 70, 50)
    unlabelled = SplitPaths(root, "unlabelled")
    videos = ["synthu0000", "synthu0001"]
    assert sorted(p.name for p in unlabelled.split_dir.iterdir()) == ["JPEGImages", "full_annotations"]
    assert sorted(p.name for p in unlabelled.images.iterdir()) == videos
    expressions = read_json(unlabelled.meta_expressions)["videos"]
    assert sorted(expressions) == videos
    for index, vid in enumerate(videos):
        assert sorted(p.stem for p in (unlabelled.images / vid).glob("*.jpg")) == FRAME_IDS
        assert expressions[vid]["frames"] == FRAME_IDS
        scene = plan_video(video_rng(ARGS["seed"], "unlabelled", index), ARGS["frames"], ARGS["size"])
        assert {e["obj_id"] for e in expressions[vid]["expressions"].values()} == {
            str(o.object_id) for o in scene.objects
        }
        for t in range(ARGS["frames"]):
            labels = read_mask(unlabelled.full_annotations / vid / f"{t:05d}.png")
            np.testing.assert_array_equal(labels, render_frame(scene, t).labels)
    # The same generator, other seeds: no unlabelled frame repeats a train frame.
    hashes = tree_hashes(root)
    train_jpegs = {value for name, value in hashes.items() if name.startswith("train/JPEGImages")}
    assert not {value for name, value in hashes.items() if name.startswith("unlabelled/JPEGImages")} & train_jpegs
    without = {name: value for name, value in tree_hashes(dataset).items() if name != "synth.json"}
    assert {name: hashes[name] for name in without} == without
    labelled_texts = generate_synthetic(dataset, **ARGS).expressions
    assert sum(len(v["expressions"]) for v in expressions.values()) == summary.expressions - labelled_texts
    assert generate_synthetic(root, **ARGS, unlabelled_videos=2).reused
    with pytest.raises(ConfigError, match="other arguments"):
        generate_synthetic(root, **ARGS)
    with pytest.raises(ConfigError, match=r"unlabelled_videos must be an integer >= 0"):
        generate_synthetic(tmp_path / "bad", **ARGS, unlabelled_videos=-1)


def test_records_without_unlabelled_videos_are_reused_as_zero(tmp_path: Path) -> None:
    old = tmp_path / "old"
    generate_synthetic(old, **ARGS)
    record = read_json(old / "synth.json")
    del record["arguments"]["unlabelled_videos"], record["unlabelled_videos"]
    write_json(old / "synth.json", record)
    again = generate_synthetic(old, **ARGS)
    assert again.reused and again.unlabelled_videos == 0
    assert not (old / "unlabelled").exists() and not (old / "meta_expressions/unlabelled").exists()
