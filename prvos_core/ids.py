"""Identifiers that become paths: validation and stable expression ids."""

from __future__ import annotations

import hashlib
import re

# Ids become folder and file names in run stores and object stores: keep them to a portable alphabet.
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def id_problem(value: object) -> str | None:
    """Return why `value` is not a safe id (None when it is safe).

    A safe id is a non-empty string of letters, digits, '.', '_' and '-', at most 128 characters, not starting
    with '.', '_' or '-' (so no hidden files, no `..`, no path separators).
    """
    if not isinstance(value, str):
        return f"id must be a string, got {type(value).__name__}"
    if value == "":
        return "id is empty"
    if "/" in value or "\\" in value:
        return f"id {value!r} contains a path separator"
    if ".." in value:
        return f"id {value!r} contains '..'"
    if not _ID_PATTERN.match(value):
        return f"id {value!r} has characters outside [A-Za-z0-9._-] or is longer than 128"
    return None


def is_safe_id(value: object) -> bool:
    return id_problem(value) is None


def expression_id(video_id: str, object_id: str, text: str, variant: str = "") -> str:
    """A stable id for an expression: `<video>_<object>_<hash of the text>`.

    The same (video, object, text) always gives the same id, across runs, machines and dataset orderings;
    the text hash keeps two expressions of one object apart. `variant` separates equal texts that must stay
    apart (Ref-DAVIS17: the same sentence from two annotators, or first-frame and full-video).
    """
    key = f"{video_id}\x1f{object_id}\x1f{text}" + (f"\x1f{variant}" if variant else "")
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return f"{video_id}_{object_id}_{digest}"
