"""Folders of results for people (`prvos predict`, `prvos inspect`): written whole or not at all.

`staged_folder(target, marker)` yields a staging folder beside `target`; when the block ends without an error
the staging folder is renamed to `target` (an earlier output there is swapped out, then removed), else it is
deleted. `marker` names the file that identifies an earlier output of the same command: a non-empty folder
without it is never replaced, so a mistyped --out cannot delete someone's data.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prvos_core.errors import StorageError


def check_replaceable(target: Path, marker: str, command: str) -> None:
    """`target` may be absent, an empty folder or an earlier output (holding `marker`); else StorageError."""
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / marker).is_file())):
        raise StorageError(f"{target} exists and is not an earlier `{command}` output; choose another --out")


@contextmanager
def staged_folder(target: Path, marker: str, command: str) -> Iterator[Path]:
    """A staging folder that becomes `target` when the block succeeds (see the module docstring)."""
    check_replaceable(target, marker, command)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".staging", dir=target.parent))
    except OSError as error:
        raise StorageError(f"cannot write into {target.parent} ({error.strerror}); choose another --out") from None
    try:
        yield staging
        if not (staging / marker).is_file():
            raise AssertionError(f"{command} wrote no {marker}; the output would not be recognised as its own")
        # mkdtemp makes the folder private (0700); the published one gets the usual permissions.
        staging.chmod(0o777 & ~_umask())
        if target.exists():
            retired = staging.with_suffix(".retired")
            os.rename(target, retired)
            os.rename(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
