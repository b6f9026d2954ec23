"""Tests of prvos_core.datasets.merge_json on the real clips and the real Ref-YouTube-VOS valid expressions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from prvos_core.datasets.merge_json import merge_json, read_merged
from prvos_core.errors import DataError


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _expressions_by_key(merged: dict) -> dict[tuple[str, str], tuple[str | None, str]]:
    """(video, key) -> (object or None, text), over objects and unassigned expressions."""
    found = {}
    for video_id, video in merged["videos"].items():
        for object_id, item in video["objects"].items():
            for key, text in item["expressions"].items():
                assert (video_id, key) not in found
                found[video_id, key] = (object_id, text)
        for key, text in video["unassigned_expressions"].items():
            assert (video_id, key) not in found
            found[video_id, key] = (None, text)
    return found


def _copy_dataset(source: Path, target: Path) -> Path:
    """Copy only the JSON files of a dataset root (the merge never reads images)."""
    for json_file in source.rglob("*.json"):
        destination = target / json_file.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(json_file, destination)
    return target


@pytest.mark.parametrize(
    ("dataset", "split", "videos", "expressions", "categories"),
    [
        ("ref_davis16_mini", "train", 4, 4, {"bird", "person", "car", "cow"}),
        ("ref_davis16_mini", "valid", 2, 2, {"person", "dog"}),
        ("cutie_judo_sparse", "train", 1, 5, {"person"}),
    ],
)
def test_merges_real_splits(
    shared_data: Path, tmp_path: Path, dataset: str, split: str, videos: int, expressions: int, categories: set
) -> None:
    root = _copy_dataset(shared_data / dataset, tmp_path / dataset)
    written = merge_json(root, split)
    assert written == root / f"new_{split}.json"
    merged = read_merged(written)

    meta = _load(root / split / "meta.json")["videos"]
    meta_expressions = _load(root / "meta_expressions" / split / "meta_expressions.json")["videos"]
    assert len(merged["videos"]) == videos
    found = _expressions_by_key(merged)
    assert len(found) == expressions
    for video_id, entry in meta_expressions.items():
        video = merged["videos"][video_id]
        assert video["frames"] == entry["frames"]
        assert video["unassigned_expressions"] == {}
        for key, item in entry["expressions"].items():
            assert found[video_id, key] == (item["obj_id"], item["exp"])
        for object_id, item in meta[video_id]["objects"].items():
            assert video["objects"][object_id]["category"] == item["category"]
            assert video["objects"][object_id]["frames"] == item["frames"]
    assert {o["category"] for v in merged["videos"].values() for o in v["objects"].values()} == categories


def test_sparse_video_keeps_one_object_per_mask_frame(shared_data: Path, tmp_path: Path) -> None:
    root = _copy_dataset(shared_data / "cutie_judo_sparse", tmp_path / "judo")
    judo = read_merged(merge_json(root, "train"))["videos"]["judo"]
    assert len(judo["frames"]) == 16
    assert {oid: item["frames"] for oid, item in judo["objects"].items()} == {
        "1": ["00000"],
        "2": ["00005"],
        "3": ["00008"],
        "4": ["00013"],
    }
    assert sorted(judo["objects"]["1"]["expressions"]) == ["0", "1"]


def test_valid_split_without_meta_json_keeps_every_expression_unassigned(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "text_only" / "ref_youtube_vos_valid_meta_expressions.json"
    target = tmp_path / "meta_expressions" / "valid" / "meta_expressions.json"
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target)

    out = tmp_path / "elsewhere" / "merged_valid.json"
    assert merge_json(tmp_path, "valid", out) == out
    assert not (tmp_path / "new_valid.json").exists()
    merged = read_merged(out)

    original = _load(source)["videos"]
    assert len(merged["videos"]) == 507
    found = _expressions_by_key(merged)
    assert len(found) == 2096
    for video_id, entry in original.items():
        video = merged["videos"][video_id]
        assert video["objects"] == {}
        assert video["frames"] == entry["frames"]
        assert video["unassigned_expressions"] == {key: item["exp"] for key, item in entry["expressions"].items()}


def test_valid_meta_without_categories_and_obj_ids_outside_meta(tmp_path: Path) -> None:
    (tmp_path / "valid").mkdir()
    (tmp_path / "valid" / "meta.json").write_text(
        json.dumps({"videos": {"v1": {"objects": {"1": {"frames": ["00000"]}}}}}), encoding="utf-8"
    )
    expressions = {
        "videos": {
            "v1": {
                "frames": ["00000", "00005"],
                "expressions": {
                    "0": {"exp": "a café table", "obj_id": "1"},
                    "1": {"exp": "a dog", "obj_id": 2},
                    "2": {"exp": "the sky"},
                },
            }
        }
    }
    meta_expressions = tmp_path / "meta_expressions" / "valid" / "meta_expressions.json"
    meta_expressions.parent.mkdir(parents=True)
    meta_expressions.write_text(json.dumps(expressions), encoding="utf-8")

    video = read_merged(merge_json(tmp_path, "valid"))["videos"]["v1"]
    assert video == {
        "frames": ["00000", "00005"],
        "objects": {
            "1": {"category": None, "frames": ["00000"], "expressions": {"0": "a café table"}},
            "2": {"category": None, "frames": [], "expressions": {"1": "a dog"}},
        },
        "unassigned_expressions": {"2": "the sky"},
    }


def test_output_is_deterministic(shared_data: Path, tmp_path: Path) -> None:
    root = _copy_dataset(shared_data / "ref_davis16_mini", tmp_path / "mini")
    first = merge_json(root, "train", tmp_path / "a.json").read_bytes()
    second = merge_json(root, "train", tmp_path / "b.json").read_bytes()
    assert first == second


def test_truncated_json_is_one_line_data_error(shared_data: Path, tmp_path: Path) -> None:
    root = _copy_dataset(shared_data / "ref_davis16_mini", tmp_path / "mini")
    meta_expressions = root / "meta_expressions" / "train" / "meta_expressions.json"
    meta_expressions.write_bytes(meta_expressions.read_bytes()[:300])
    with pytest.raises(DataError) as error:
        merge_json(root, "train")
    message = str(error.value)
    assert "\n" not in message
    assert str(meta_expressions) in message and "malformed JSON" in message
    assert not (root / "new_train.json").exists()


def test_missing_meta_expressions_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="meta_expressions.json: file not found"):
        merge_json(tmp_path, "train")


def test_expression_without_text_names_the_place(tmp_path: Path) -> None:
    meta_expressions = tmp_path / "meta_expressions" / "train" / "meta_expressions.json"
    meta_expressions.parent.mkdir(parents=True)
    meta_expressions.write_text(
        json.dumps({"videos": {"v1": {"frames": ["00000"], "expressions": {"3": {"obj_id": "1"}}}}}), encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"videos\.v1\.expressions\.3\.exp must be a text string"):
        merge_json(tmp_path, "train")


def test_text_that_is_not_utf8_names_the_expression(tmp_path: Path) -> None:
    meta_expressions = tmp_path / "meta_expressions" / "train" / "meta_expressions.json"
    meta_expressions.parent.mkdir(parents=True)
    meta_expressions.write_bytes(b'{"videos": {"v1": {"frames": [], "expressions": {"0": {"exp": "caf\xe9"}}}}}')
    with pytest.raises(DataError, match=r"videos\.v1\.expressions\.0\.exp is not valid UTF-8"):
        merge_json(tmp_path, "train")


@pytest.mark.parametrize(
    ("video", "place"),
    [
        ({"frames": [], "objects": {}}, "videos.v1 lacks unassigned_expressions"),
        ({"frames": [1], "objects": {}, "unassigned_expressions": {}}, "videos.v1.frames must be a list"),
        (
            {
                "frames": [],
                "objects": {"1": {"category": 3, "frames": [], "expressions": {}}},
                "unassigned_expressions": {},
            },
            "videos.v1.objects.1.category must be a string or null",
        ),
        (
            {
                "frames": [],
                "objects": {"1": {"category": None, "frames": [], "expressions": ["a"]}},
                "unassigned_expressions": {},
            },
            "videos.v1.objects.1.expressions must be a JSON object",
        ),
    ],
)
def test_read_merged_names_the_broken_place(tmp_path: Path, video: dict, place: str) -> None:
    path = tmp_path / "new_train.json"
    path.write_text(json.dumps({"videos": {"v1": video}}), encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_merged(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {place}") and "\n" not in message
