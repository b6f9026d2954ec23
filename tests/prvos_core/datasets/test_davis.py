"""Tests of prvos_core.datasets.davis on a tiny DAVIS-2017 tree built from real frames and masks in shared_data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from prvos_core.data.masks import read_mask, write_palette_mask
from prvos_core.datasets.davis import convert_davis, read_text_annotations
from prvos_core.datasets.merge_json import merge_json, read_merged
from prvos_core.errors import DataError

BLACKSWAN_FRAMES = ["00000", "00002", "00004"]
COWS_FRAMES = ["00000", "00004", "00008"]

# Annotator 1 (UTF-8, CRLF, a blank line); cows objects deliberately out of order in the full-video file.
ANNOT1 = (
    'blackswan 1 "a black swan on a café pond"\r\n\r\ncows 1 "the cow on the left"\r\ncows 2 "the cow on the right"\r\n'
)
ANNOT1_FULL = 'cows 2 "a cow walking to the right"\nblackswan 1 "a swan swimming"\ncows 1 "a cow grazing"\n'
# Annotator 2 (latin-1): non-ASCII letters, a 0x85 byte (a line break to str.splitlines), an unlisted video
# spelt as the real files misspell it, and an object that no mask shows.
ANNOT2 = 'blackswan 1 "un cygne noir près de l\'eau"\ncows 1 "la vache à gauche"\ncows 2 "the cow\x85 on the right"\n'
ANNOT2_FULL = (
    'cows 1 "une vache naïve"\ncows 2 "the other cow"\ncows 3 "a calf that is never masked"\n'
    'blackswan 1 "a swan"\nmotor-bike 1 "a motorbike"\n'
)


def _make_davis(shared_data: Path, root: Path) -> dict[str, Path]:
    """A DAVIS-2017 tree: blackswan (train, object 1) and cows (val, the cow split into objects 1 and 2).

    Returns the input mask paths by "<video>/<frame>". In cows, object 2 is the part of the cow right of its
    median column and is erased from the last frame, so object 2 is missing there.
    """
    source = shared_data / "ref_davis16_mini" / "train"
    masks = {}
    for video, frames in (("blackswan", BLACKSWAN_FRAMES), ("cows", COWS_FRAMES)):
        (root / "JPEGImages" / "480p" / video).mkdir(parents=True)
        (root / "Annotations" / "480p" / video).mkdir(parents=True)
        for index, frame in enumerate(frames):
            shutil.copyfile(
                source / "JPEGImages" / video / f"{frame}.jpg", root / "JPEGImages" / "480p" / video / f"{frame}.jpg"
            )
            target = root / "Annotations" / "480p" / video / f"{frame}.png"
            if video == "blackswan":
                shutil.copyfile(source / "Annotations" / video / f"{frame}.png", target)
            else:
                ids = read_mask(source / "Annotations" / video / f"{frame}.png")
                columns = np.nonzero(ids == 1)[1]
                ids[:, int(np.median(columns)) :] *= 2
                if index == len(frames) - 1:
                    ids[ids == 2] = 0
                write_palette_mask(target, ids)
            masks[f"{video}/{frame}"] = target
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "train.txt").write_text("blackswan\n", encoding="utf-8")
    (root / "ImageSets" / "2017" / "val.txt").write_text("cows\n\n", encoding="utf-8")
    (root / "davis_semantics.json").write_text(json.dumps({"blackswan": {"1": "bird"}}), encoding="utf-8")
    return masks


def _make_text(text_dir: Path) -> Path:
    text_dir.mkdir(parents=True)
    (text_dir / "Davis17_annot1.txt").write_bytes(ANNOT1.encode("utf-8"))
    (text_dir / "Davis17_annot1_full_video.txt").write_bytes(ANNOT1_FULL.encode("utf-8"))
    (text_dir / "Davis17_annot2.txt").write_bytes(ANNOT2.encode("latin-1"))
    (text_dir / "Davis17_annot2_full_video.txt").write_bytes(ANNOT2_FULL.encode("latin-1"))
    return text_dir


@pytest.fixture
def davis(shared_data: Path, tmp_path: Path) -> tuple[Path, Path, dict[str, Path]]:
    masks = _make_davis(shared_data, tmp_path / "DAVIS")
    return tmp_path / "DAVIS", _make_text(tmp_path / "text"), masks


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_converts_to_ref_youtube_vos_layout(davis, tmp_path: Path) -> None:
    davis_root, text_dir, input_masks = davis
    out = tmp_path / "ref_davis"
    calls = []
    summary = convert_davis(davis_root, text_dir, out, progress=lambda done, total: calls.append((done, total)))

    assert calls == [(1, 2), (2, 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DAVIS", "ref_davis", "text"]  # no staging folder left
    for split, video, frames in (("train", "blackswan", BLACKSWAN_FRAMES), ("valid", "cows", COWS_FRAMES)):
        images = sorted(p.name for p in (out / split / "JPEGImages" / video).iterdir())
        assert images == [f"{frame}.jpg" for frame in frames]
        for frame in frames:
            jpg = out / split / "JPEGImages" / video / f"{frame}.jpg"
            assert jpg.read_bytes() == (davis_root / "JPEGImages" / "480p" / video / f"{frame}.jpg").read_bytes()
            png = out / split / "Annotations" / video / f"{frame}.png"
            assert png.read_bytes() == input_masks[f"{video}/{frame}"].read_bytes()
    assert np.array_equal(np.unique(read_mask(out / "valid" / "Annotations" / "cows" / "00000.png")), [0, 1, 2])

    assert _json(out / "train" / "meta.json") == {
        "videos": {"blackswan": {"objects": {"1": {"category": "bird", "frames": BLACKSWAN_FRAMES}}}}
    }
    assert _json(out / "valid" / "meta.json") == {
        "videos": {
            "cows": {
                "objects": {
                    "1": {"category": None, "frames": COWS_FRAMES},
                    "2": {"category": None, "frames": COWS_FRAMES[:2]},
                }
            }
        }
    }

    def tag(text: str, obj_id: str, annotator: int, kind: str) -> dict:
        return {"exp": text, "obj_id": obj_id, "annotator": annotator, "kind": kind}

    train = _json(out / "meta_expressions" / "train" / "meta_expressions.json")["videos"]
    assert train == {
        "blackswan": {
            "frames": BLACKSWAN_FRAMES,
            "expressions": {
                "0": tag("a black swan on a café pond", "1", 1, "first_frame"),
                "1": tag("a swan swimming", "1", 1, "full_video"),
                "2": tag("un cygne noir près de l'eau", "1", 2, "first_frame"),
                "3": tag("a swan", "1", 2, "full_video"),
            },
        }
    }
    valid = _json(out / "meta_expressions" / "valid" / "meta_expressions.json")["videos"]
    assert valid["cows"]["frames"] == COWS_FRAMES
    assert valid["cows"]["expressions"] == {
        "0": tag("the cow on the left", "1", 1, "first_frame"),
        "1": tag("the cow on the right", "2", 1, "first_frame"),
        "2": tag("a cow grazing", "1", 1, "full_video"),
        "3": tag("a cow walking to the right", "2", 1, "full_video"),
        "4": tag("la vache à gauche", "1", 2, "first_frame"),
        "5": tag("the cow\x85 on the right", "2", 2, "first_frame"),
        "6": tag("une vache naïve", "1", 2, "full_video"),
        "7": tag("the other cow", "2", 2, "full_video"),
        "8": tag("a calf that is never masked", "3", 2, "full_video"),
    }

    assert summary.out == out
    assert summary.videos == {"train": 1, "valid": 1}
    assert summary.expressions == {"train": 4, "valid": 9}
    assert (summary.frames, summary.masks) == (6, 6)
    assert summary.unlisted_videos == ("motorbike",)
    assert summary.expressions_without_mask == 1
    assert str(summary).startswith("train: 1 videos, 4 expressions, valid: 1 videos, 9 expressions; 6 frames, 6 masks")


def test_output_merges_with_categories_and_keys(davis, tmp_path: Path) -> None:
    davis_root, text_dir, _ = davis
    out = tmp_path / "ref_davis"
    convert_davis(davis_root, text_dir, out)
    cows = read_merged(merge_json(out, "valid"))["videos"]["cows"]
    assert {oid: sorted(item["expressions"], key=int) for oid, item in cows["objects"].items()} == {
        "1": ["0", "2", "4", "6"],
        "2": ["1", "3", "5", "7"],
        "3": ["8"],
    }
    assert cows["objects"]["3"] == {"category": None, "frames": [], "expressions": {"8": "a calf that is never masked"}}


def test_conversion_is_deterministic(davis, tmp_path: Path) -> None:
    davis_root, text_dir, _ = davis
    convert_davis(davis_root, text_dir, tmp_path / "a")
    convert_davis(davis_root, text_dir, tmp_path / "b")
    for name in ("valid/meta.json", "meta_expressions/valid/meta_expressions.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_read_text_annotations_decodes_both_encodings(davis) -> None:
    _, text_dir, _ = davis
    expressions = read_text_annotations(text_dir)
    assert len(expressions) == 3 + 3 + 3 + 5
    assert expressions[0].text == "a black swan on a café pond"
    assert [e.text for e in expressions if e.annotator == 2 and e.object_id == "1" and e.video_id == "cows"] == [
        "la vache à gauche",
        "une vache naïve",
    ]
    assert expressions[-1].video_id == "motorbike"


def _assert_one_line_error(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message


def test_malformed_line_names_file_and_line(davis, tmp_path: Path) -> None:
    davis_root, text_dir, _ = davis
    annot1 = text_dir / "Davis17_annot1.txt"
    annot1.write_bytes(ANNOT1.encode("utf-8") + b"cows 2 the cow without quotes\r\n")
    with pytest.raises(DataError) as error:
        convert_davis(davis_root, text_dir, tmp_path / "out")
    _assert_one_line_error(error, f"{annot1}, line 5", "the cow without quotes")
    assert not (tmp_path / "out").exists()


def test_annotator1_bytes_that_are_not_utf8_name_the_line(davis, tmp_path: Path) -> None:
    davis_root, text_dir, _ = davis
    annot1 = text_dir / "Davis17_annot1.txt"
    annot1.write_bytes(b'blackswan 1 "a swan"\ncows 1 "caf\xe9"\n')
    with pytest.raises(DataError) as error:
        convert_davis(davis_root, text_dir, tmp_path / "out")
    _assert_one_line_error(error, f"{annot1}, line 2", "not valid UTF-8")


def test_missing_text_file_is_named(davis, tmp_path: Path) -> None:
    davis_root, text_dir, _ = davis
    (text_dir / "Davis17_annot2_full_video.txt").unlink()
    with pytest.raises(DataError) as error:
        convert_davis(davis_root, text_dir, tmp_path / "out")
    _assert_one_line_error(error, "Davis17_annot2_full_video.txt: Ref-DAVIS17 text file not found")


def test_listed_video_missing_on_disk_is_named(davis, tmp_path: Path) -> None:
    davis_root, text_dir, _ = davis
    (davis_root / "ImageSets" / "2017" / "val.txt").write_text("cows\nbear\n", encoding="utf-8")
    with pytest.raises(DataError) as error:
        convert_davis(davis_root, text_dir, tmp_path / "out")
    _assert_one_line_error(error, "video 'bear' is listed in ImageSets/2017", "JPEGImages/480p/bear is missing")
    assert not (tmp_path / "out").exists()


def test_refuses_a_non_empty_output_folder(davis, tmp_path: Path) -> None:
    davis_root, text_dir, _ = davis
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(DataError, match="already exists and is not empty"):
        convert_davis(davis_root, text_dir, out)
    assert (out / "keep.txt").read_text(encoding="utf-8") == "mine"


def test_failure_mid_conversion_leaves_nothing_behind(davis, tmp_path: Path) -> None:
    davis_root, text_dir, input_masks = davis
    input_masks["cows/00004"].write_bytes(b"not a png")
    with pytest.raises(DataError) as error:
        convert_davis(davis_root, text_dir, tmp_path / "out")
    _assert_one_line_error(error, f"{input_masks['cows/00004']}: cannot read the mask")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DAVIS", "text"]
