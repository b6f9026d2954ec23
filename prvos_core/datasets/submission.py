"""The benchmarks' submission zips: where each mask goes, and a check of a zip against the split it answers.

- Ref-YouTube-VOS (its server is closed; the format is what tools that score it read):
  `Annotations/<video>/<expression key>/<frame>.png`.
- MeViS (the valid split, scored online): `<video>/<expression key>/<frame>.png` at the zip's root.

A mask is a single-channel 8-bit PNG at its frame's size, 0 background and 255 object, as stages.evaluate writes
it (under `Annotations/`; `relayout` moves it for MeViS). `check_submission` holds a zip against the split's own
meta_expressions.json, which is what the benchmark expects: a mask for every listed frame of every expression of
every video, nothing else, each a single-channel 8-bit PNG of its frame's size. An expression or frame that ingest
quarantined shows up here as missing, since the benchmark counts it all the same.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from prvos_core.data.source import SplitSource

SHOWN = 3  # paths named per kind of problem; the rest are counted


@dataclass(frozen=True)
class SubmissionLayout:
    benchmark: str
    prefix: str  # the folder every mask path starts with ("" = the zip's root)

    def path(self, video_id: str, expression_key: str, frame_id: str) -> str:
        return f"{self.prefix}{video_id}/{expression_key}/{frame_id}.png"


YOUTUBE_VOS = SubmissionLayout("Ref-YouTube-VOS", "Annotations/")
MEVIS = SubmissionLayout("MeViS", "")


@dataclass(frozen=True)
class SubmissionCheck:
    """How a submission zip compares with what its benchmark expects."""

    benchmark: str
    expressions: int  # expressions the split lists
    expected: int  # masks expected: every listed frame of every expression
    found: int  # masks in the zip
    missing: int
    unexpected: int  # files the benchmark does not ask for
    malformed: int  # not a single-channel 8-bit PNG of its frame's size
    examples: tuple[str, ...]  # up to SHOWN of each kind of problem, "missing: <path>"

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.malformed)

    def __str__(self) -> str:
        head = f"{self.benchmark} submission: {self.found} of {self.expected} masks for {self.expressions} expressions"
        if self.complete:
            return f"{head}, layout as the benchmark expects"
        problems = [f"{n} {kind}" for n, kind in ((self.missing, "missing"), (self.unexpected, "unexpected"),
                                                   (self.malformed, "malformed")) if n]  # fmt: skip
        return f"{head}; {', '.join(problems)} (e.g. {'; '.join(self.examples)})"


def expected_masks(split: SplitSource, layout: SubmissionLayout) -> tuple[int, set[str]]:
    """(expressions, mask paths) the benchmark expects for a split: every listed frame of every expression."""
    expressions, paths = 0, set()
    for video in split.videos:
        for expression in video.expressions:
            expressions += 1
            paths.update(layout.path(video.video_id, expression.key, frame) for frame in video.listed_frames)
    return expressions, paths


def check_submission(
    archive: str | Path, split: SplitSource, layout: SubmissionLayout, sizes: Mapping[str, tuple[int, int]]
) -> SubmissionCheck:
    """Hold the zip `archive` against the split. sizes: video id -> (height, width) of its frames (videos absent
    from it are not size-checked). PNG headers are read, not decoded."""
    expressions, expected = expected_masks(split, layout)
    examples: list[str] = []
    malformed = 0
    with zipfile.ZipFile(archive) as bundle:
        found = {name for name in bundle.namelist() if not name.endswith("/")}
        for name in sorted(found & expected):
            problem = _png_problem(bundle, name, sizes.get(name[len(layout.prefix) :].split("/", 1)[0]))
            if problem:
                malformed += 1
                if malformed <= SHOWN:
                    examples.append(f"malformed: {name} ({problem})")
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    examples = [f"missing: {p}" for p in missing[:SHOWN]] + [f"unexpected: {p}" for p in unexpected[:SHOWN]] + examples
    return SubmissionCheck(
        layout.benchmark, expressions, len(expected), len(found & expected), len(missing), len(unexpected), malformed,
        tuple(examples),
    )  # fmt: skip


def _png_problem(bundle: zipfile.ZipFile, name: str, size: tuple[int, int] | None) -> str | None:
    try:
        with bundle.open(name) as handle, Image.open(handle) as image:
            if image.format != "PNG" or image.mode != "L":
                return f"{image.format} {image.mode}, not a single-channel 8-bit PNG"
            if size is not None and (image.height, image.width) != tuple(size):
                return f"{image.width}x{image.height}, its frame is {size[1]}x{size[0]}"
    except (UnidentifiedImageError, OSError) as error:
        return f"unreadable ({error})"
    return None


def relayout(source: str | Path, target: str | Path, layout: SubmissionLayout) -> None:
    """Copy the zip `source` (masks under `Annotations/`, as stages.evaluate writes them) to `target` with the
    masks under `layout.prefix`; written beside `target` and renamed into place."""
    target = Path(target)
    partial = target.with_name(f".{target.name}.partial")
    with zipfile.ZipFile(source) as bundle, zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as out:
        for info in bundle.infolist():
            name = info.filename.removeprefix(YOUTUBE_VOS.prefix)
            out.writestr(layout.prefix + name, bundle.read(info))
    os.replace(partial, target)
