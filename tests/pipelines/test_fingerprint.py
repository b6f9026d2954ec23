"""Dataset fingerprints see every file of a root, through symlinked folders too, so changed data re-runs ingest."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pipelines.fingerprint import dataset_fingerprint

EMPTY = hashlib.sha256().hexdigest()[:20]  # the fingerprint of a root with no file


def _split(root: Path, split: str, frames: int) -> None:
    """A split folder with a meta file and a few frame files of distinct sizes."""
    video = root / split / "JPEGImages" / "v0"
    video.mkdir(parents=True)
    (root / split / "meta.json").write_text('{"videos": {}}')
    for index in range(frames):
        (video / f"{index:05d}.jpg").write_bytes(b"x" * (index + 1))


def _linked_root(tmp_path: Path) -> tuple[Path, Path]:
    """(real root, a root whose split folders are symlinks to the real root's)."""
    real, linked = tmp_path / "real", tmp_path / "linked"
    _split(real, "train", 3)
    _split(real, "valid", 2)
    linked.mkdir()
    for split in ("train", "valid"):
        (linked / split).symlink_to(real / split, target_is_directory=True)
    return real, linked


def test_symlinked_split_folders_hash_like_the_real_folders(tmp_path):
    real, linked = _linked_root(tmp_path)
    assert dataset_fingerprint(linked) != EMPTY
    # Same relative paths, and the stats of the files the links lead to: the same fingerprint.
    assert dataset_fingerprint(linked) == dataset_fingerprint(real)


def test_a_change_under_a_symlinked_split_changes_the_fingerprint(tmp_path):
    real, linked = _linked_root(tmp_path)
    before = dataset_fingerprint(linked)
    (real / "train" / "JPEGImages" / "v0" / "00001.jpg").write_bytes(b"a longer frame than before")
    changed = dataset_fingerprint(linked)
    assert changed != before
    (real / "valid" / "JPEGImages" / "v0" / "00002.jpg").write_bytes(b"a new frame")
    assert dataset_fingerprint(linked) not in (before, changed)


def test_a_root_that_is_itself_a_symlink_is_followed(tmp_path):
    real, _ = _linked_root(tmp_path)
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    assert dataset_fingerprint(tmp_path / "alias") == dataset_fingerprint(real)


def test_a_link_back_up_the_tree_is_walked_once(tmp_path):
    real, _ = _linked_root(tmp_path)
    before = dataset_fingerprint(real)
    (real / "train" / "JPEGImages" / "loop").symlink_to(real, target_is_directory=True)
    assert dataset_fingerprint(real) == before  # terminates, and the loop adds no file


def test_a_dangling_link_is_part_of_the_fingerprint_not_an_error(tmp_path):
    real, _ = _linked_root(tmp_path)
    before = dataset_fingerprint(real)
    os.symlink(tmp_path / "gone.jpg", real / "train" / "JPEGImages" / "v0" / "00009.jpg")
    assert dataset_fingerprint(real) != before
