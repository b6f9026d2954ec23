"""Stable expression ids (`<video>_<object>_<hash of the text>`); the rule every id must follow is
`prvos_core.storage.id_problem`, since ids become folder and file names."""

from __future__ import annotations

import hashlib


def expression_id(video_id: str, object_id: str, text: str, variant: str = "") -> str:
    """A stable id for an expression: `<video>_<object>_<hash of the text>`.

    The same (video, object, text) always gives the same id, across runs, machines and dataset orderings;
    the text hash keeps two expressions of one object apart. `variant` separates equal texts that must stay
    apart (Ref-DAVIS17: the same sentence from two annotators, or first-frame and full-video).
    """
    key = f"{video_id}\x1f{object_id}\x1f{text}" + (f"\x1f{variant}" if variant else "")
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return f"{video_id}_{object_id}_{digest}"
