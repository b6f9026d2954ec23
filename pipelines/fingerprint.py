"""Stage fingerprints: a hash of the stage's config section, its inputs' fingerprints and the code version.

A committed stage whose fingerprint equals the one computed now is skipped; any difference re-runs it and,
since its own fingerprint changes, everything downstream.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from prvos_core import storage

_PACKAGES = ("prvos_core", "stages")


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of the source of the packages that compute artifacts (prvos_core, stages)."""
    digest = hashlib.sha256()
    repo = Path(__file__).resolve().parents[1]
    for package in _PACKAGES:
        for path in sorted((repo / package).rglob("*.py")):
            digest.update(str(path.relative_to(repo)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def fingerprint(stage: str, section: Any, inputs: dict[str, str]) -> str:
    payload = {"stage": stage, "config": section, "inputs": inputs, "code": code_version()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def dataset_fingerprint(root: str | Path) -> str:
    """Hash of a local dataset's file listing (relative path, size, mtime): cheap, catches any change."""
    if not storage.is_local(str(root)):
        return storage.listing_digest(str(root))  # an object store's listing: key, size, ETag
    root = Path(root)
    digest = hashlib.sha256()
    if root.is_file():
        stat = root.stat()
        digest.update(f"{root.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        root = root.parent
    # Symlinked folders are followed (a root assembled from linked split folders is common), each real folder
    # once: a link back up the tree would otherwise be walked forever.
    seen: set[tuple[int, int]] = set()
    for directory, subdirs, files in os.walk(root, followlinks=True):
        folder = os.stat(directory)
        if (folder.st_dev, folder.st_ino) in seen:
            subdirs.clear()
            continue
        seen.add((folder.st_dev, folder.st_ino))
        subdirs.sort()
        for name in sorted(files):
            path = os.path.join(directory, name)
            digest.update(f"{os.path.relpath(path, root)}:{_file_state(path)}\n".encode())
    return digest.hexdigest()[:20]


def _file_state(path: str) -> str:
    """Size and modification time of the file a path names (through symlinks); a dangling link hashes as such,
    so ingest, not the fingerprint, reports it."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return "dangling link"
    return f"{stat.st_size}:{stat.st_mtime_ns}"
