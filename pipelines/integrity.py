"""Checksums of what a stage wrote, recorded in its commit marker, and the checks that find damage later.

A stage's marker maps every file under the stage folder (relative path, '/'-separated) to [size, blake2b].
Two levels of checking:
- sizes: one listing of the folder; finds deleted, truncated and grown files. `prvos run` does this for every
  stage it skips, so an unchanged finished run stays fast.
- hashes: reads every byte; finds any change. `prvos resume` and `prvos status --verify` do this.
Files through fsspec (prvos_core.storage), so a run store on s3:// is checked the same way.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from dataclasses import dataclass

from pipelines.run_store import MARKER, RunStore
from prvos_core import storage
from prvos_core.errors import StorageError

BLOCK = 1 << 20
# Written by the runner after the checksums are taken, or transient files of an atomic write.
IGNORED_NAMES = (MARKER,)
IGNORED_SUFFIXES = (".partial",)


# Records of where and how fast the work ran (Ray node ids, timings), not results: checksummed like every file,
# but left out when deciding whether a re-run stage wrote other results than before.
RUN_RECORDS = ("placement.json",)


def results(files: dict[str, list]) -> dict[str, list]:
    """A marker's `files` without the run records: what stages downstream read."""
    return {path: entry for path, entry in files.items() if posixpath.basename(path) not in RUN_RECORDS}


@dataclass(frozen=True)
class Damage:
    stage: str
    path: str  # relative to the stage folder
    problem: str  # "missing", "size 10 (recorded 20)", "content changed (hash differs)"

    def __str__(self) -> str:
        return f"{self.stage}/{self.path}: {self.problem}"


def file_sizes(folder: str) -> dict[str, int]:
    """Relative path -> size of every file under `folder` (empty when the folder does not exist)."""
    fs, root = storage.filesystem(folder)
    if not fs.exists(root):
        return {}
    root = root.rstrip("/")
    if storage.is_local(folder):
        found = _local_sizes(root)  # os.scandir: several times faster than fsspec's find on Zarr's many chunks
    else:
        found = fs.find(root, detail=True, withdirs=False)
    sizes = {}
    for path, info in found.items():
        if path.endswith("/"):  # an object store's empty "<folder>/" marker object, not a file
            continue
        relative = posixpath.relpath(path.replace("\\", "/"), root.replace("\\", "/"))
        name = posixpath.basename(relative)
        if name in IGNORED_NAMES or name.endswith(IGNORED_SUFFIXES):
            continue
        sizes[relative] = int(info.get("size") or 0)
    return sizes


def _local_sizes(root: str) -> dict[str, dict]:
    """Like fsspec's find(detail=True) on a local folder, sizes only."""
    found, pending = {}, [root]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    found[entry.path] = {"size": entry.stat(follow_symlinks=False).st_size}
    return found


def file_hash(uri: str) -> str:
    fs, path = storage.filesystem(uri)
    digest = hashlib.blake2b(digest_size=16)
    with fs.open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def checksums(folder: str) -> dict[str, list]:
    """Relative path -> [size, blake2b hex] of every file under `folder`: what a marker records."""
    return {path: [size, file_hash(storage.join(folder, path))] for path, size in sorted(file_sizes(folder).items())}


def verify(stage: str, folder: str, recorded: dict[str, list], *, hashes: bool) -> list[Damage]:
    """The files of `recorded` that are missing, of another size or (hashes=True) of other content.

    Files present but not recorded are not damage (nothing downstream reads them)."""
    sizes = file_sizes(folder)
    damage = []
    for path, (size, digest) in sorted(recorded.items()):
        if path not in sizes:
            damage.append(Damage(stage, path, "missing"))
        elif sizes[path] != size:
            damage.append(Damage(stage, path, f"size {sizes[path]} (recorded {size})"))
        elif hashes and file_hash(storage.join(folder, path)) != digest:
            damage.append(Damage(stage, path, "content changed (hash differs)"))
    return damage


def verify_run(store: RunStore, stages: list[str], *, hashes: bool = True) -> dict[str, list[Damage]]:
    """Stage -> its damaged files, for every committed stage of `stages` (an unreadable marker is damage too).
    Stages committed before markers carried checksums have nothing to check against and count as intact."""
    found = {}
    for stage in stages:
        try:
            marker = store.read_marker(stage)
        except StorageError as error:
            found[stage] = [Damage(stage, MARKER, f"unreadable ({error})")]
            continue
        if marker is not None:
            damage = verify(stage, store.stage_dir(stage), marker.files, hashes=hashes)
            if damage:
                found[stage] = damage
    return found
