"""Converting Ref-DAVIS17 (DAVIS-2017 plus the Khoreva et al. text files) to the Ref-YouTube-VOS layout.

Input:
```
<davis_root>/JPEGImages/<resolution>/<video>/<frame>.jpg
<davis_root>/Annotations/<resolution>/<video>/<frame>.png    palette PNG, pixel value = object id
<davis_root>/ImageSets/2017/train.txt, val.txt               one video name a line
<davis_root>/davis_semantics.json                           optional: {video: {object: category}}
<text_dir>/Davis17_annot{1,2}.txt, Davis17_annot{1,2}_full_video.txt
                                                             `video object "expression"`, one line an object
```
Output: `<out>/train` and `<out>/valid` (DAVIS val) in the layout of prvos_core.data.layout. Frames and masks are
hard-linked (copied where a link is impossible), so masks stay byte-identical palette PNGs. Every expression
carries its `annotator` (1 or 2) and `kind` ("first_frame": written looking at the first frame only,
"full_video": after watching the whole video), so evaluation can report each annotator and their mean.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prvos_core.data.layout import SplitPaths, read_json, require_mapping, write_json
from prvos_core.data.masks import read_mask
from prvos_core.errors import DataError
from prvos_core.storage import id_problem

# (file, annotator, kind, encoding), in the order expression keys are numbered. Annotator 2's files are
# latin-1; "utf-8-sig" also accepts a byte-order mark in annotator 1's.
TEXT_FILES = (
    ("Davis17_annot1.txt", 1, "first_frame", "utf-8-sig"),
    ("Davis17_annot1_full_video.txt", 1, "full_video", "utf-8-sig"),
    ("Davis17_annot2.txt", 2, "first_frame", "latin-1"),
    ("Davis17_annot2_full_video.txt", 2, "full_video", "latin-1"),
)
KINDS = ("first_frame", "full_video")
# DAVIS val -> our valid split.
SPLITS = (("train", "train.txt"), ("valid", "val.txt"))
# The text files spell three sequence names differently from DAVIS-2017 itself.
_VIDEO_NAME_FIXES = {"clasic-car": "classic-car", "dog-scale": "dogs-scale", "motor-bike": "motorbike"}
_LINE = re.compile(r'(?P<video>\S+)\s+(?P<object>\d+)\s+"(?P<text>.*)"')
# 255 marks "void" pixels in the DAVIS/PASCAL palette convention: not an object.
_VOID = 255


@dataclass(frozen=True)
class DavisExpression:
    video_id: str
    object_id: str  # mask pixel value, as a decimal string without leading zeros
    text: str
    annotator: int  # 1 or 2
    kind: str  # "first_frame" or "full_video"


@dataclass(frozen=True)
class DavisSummary:
    out: Path
    videos: dict[str, int]  # split -> videos written
    expressions: dict[str, int]  # split -> expressions written
    frames: int
    masks: int
    unlisted_videos: tuple[str, ...]  # named in the text files but in neither ImageSets list: not converted
    expressions_without_mask: int  # their object id appears in no mask of the video

    def __str__(self) -> str:
        splits = ", ".join(f"{s}: {self.videos[s]} videos, {self.expressions[s]} expressions" for s in self.videos)
        text = f"{splits}; {self.frames} frames, {self.masks} masks"
        if self.unlisted_videos:
            text += f"; skipped text for videos in no ImageSets list: {', '.join(self.unlisted_videos)}"
        if self.expressions_without_mask:
            text += f"; {self.expressions_without_mask} expressions name an object with no mask"
        return text


def read_text_annotations(text_dir: str | Path) -> tuple[DavisExpression, ...]:
    """Every expression of the four Ref-DAVIS17 text files, in file order (files in TEXT_FILES order).

    Blank lines and CRLF endings are fine; a missing file, a line that is not `video object "text"`, or bytes
    that do not decode raise DataError naming the file (and line).
    """
    expressions = []
    for name, annotator, kind, encoding in TEXT_FILES:
        path = Path(text_dir) / name
        for number, line in _lines(path, encoding):
            video_id, object_id, text = _parse_line(line, path, number)
            expressions.append(DavisExpression(video_id, object_id, text, annotator, kind))
    return tuple(expressions)


def convert_davis(
    davis_root: str | Path,
    text_dir: str | Path,
    out: str | Path,
    *,
    resolution: str = "480p",
    annotations: str = "Annotations",
    progress: Callable[[int, int], None] | None = None,
) -> DavisSummary:
    """Convert DAVIS-2017 + Ref-DAVIS17 text into a Ref-YouTube-VOS-layout dataset at `out`.

    `annotations` names the mask folder: "Annotations" (semi-supervised ids) or "Annotations_unsupervised",
    whichever numbering the text files' object ids follow in your copy of Ref-DAVIS17.

    Everything is written into a hidden sibling folder first and renamed to `out` at the end, so `out` is
    either complete or absent. `progress(done, total)` is called after each video.
    """
    davis_root, out = Path(davis_root), Path(out)
    expressions = read_text_annotations(text_dir)
    split_videos = {split: _image_set(davis_root, listing) for split, listing in SPLITS}
    sources = {
        video: _video_sources(davis_root, resolution, annotations, video)
        for videos in split_videos.values()
        for video in videos
    }
    categories = _categories(davis_root)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists and is not empty; remove it or choose another output folder")

    by_video: dict[str, list[DavisExpression]] = {}
    for expression in expressions:
        by_video.setdefault(expression.video_id, []).append(expression)
    staging = out.with_name(f".{out.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)  # left behind by an interrupted conversion
    committed = False
    try:
        converted = _write_dataset(staging, split_videos, sources, by_video, categories, progress)
        if out.exists():
            out.rmdir()
        staging.rename(out)
        committed = True
    finally:
        if not committed and staging.exists():
            shutil.rmtree(staging)
    every = [result for results in converted.values() for result in results]
    listed = {result.video_id for result in every}
    return DavisSummary(
        out=out,
        videos={split: len(results) for split, results in converted.items()},
        expressions={split: sum(len(r.entry["expressions"]) for r in results) for split, results in converted.items()},
        frames=sum(len(result.entry["frames"]) for result in every),
        masks=sum(result.masks for result in every),
        unlisted_videos=tuple(sorted(by_video.keys() - listed)),
        expressions_without_mask=sum(result.expressions_without_mask for result in every),
    )


def _write_dataset(
    staging: Path,
    split_videos: dict[str, list[str]],
    sources: dict[str, tuple[Path, Path]],
    by_video: dict[str, list[DavisExpression]],
    categories: dict[str, dict[str, str]],
    progress: Callable[[int, int], None] | None,
) -> dict[str, list[_ConvertedVideo]]:
    """Write every split into `staging`: frames, masks, meta.json and meta_expressions.json."""
    converted: dict[str, list[_ConvertedVideo]] = {split: [] for split in split_videos}
    for split, videos in split_videos.items():
        paths = SplitPaths(staging, split)
        for video in videos:
            images, annotations = sources[video]
            converted[split].append(
                _convert_video(paths, video, images, annotations, by_video.get(video, []), categories.get(video, {}))
            )
            if progress is not None:
                progress(sum(map(len, converted.values())), len(sources))
        write_json(paths.meta, {"videos": {r.video_id: {"objects": r.objects} for r in converted[split]}})
        write_json(paths.meta_expressions, {"videos": {r.video_id: r.entry for r in converted[split]}})
    return converted


def _lines(path: Path, encoding: str) -> list[tuple[int, str]]:
    """(1-based line number, line) of the non-blank lines of a text file."""
    if not path.is_file():
        raise DataError(f"{path}: Ref-DAVIS17 text file not found; put all four Davis17_annot*.txt files there")
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        name = encoding.removesuffix("-sig").upper()
        raise DataError(f"{path}, line {line}: not valid {name}; re-save the file as {name}") from None
    # Split on "\n" only: str.splitlines would also break at U+0085, a latin-1 character in annotator 2's files.
    numbered = enumerate((line.rstrip("\r") for line in text.split("\n")), start=1)
    return [(number, line) for number, line in numbered if line.strip()]


def _parse_line(line: str, path: Path, number: int) -> tuple[str, str, str]:
    """(video, object, text) of one `video object "text"` line."""
    match = _LINE.fullmatch(line.strip())
    if match is None or not match["text"].strip():
        raise DataError(
            f'{path}, line {number}: expected `video object_id "expression"`, got {line.strip()[:80]!r}; fix the line'
        )
    video_id = _VIDEO_NAME_FIXES.get(match["video"], match["video"])
    return video_id, str(int(match["object"])), match["text"]


def _image_set(davis_root: Path, listing: str) -> list[str]:
    """Video names of one ImageSets/2017 list, in file order."""
    path = davis_root / "ImageSets" / "2017" / listing
    if not path.is_file():
        raise DataError(f"{path}: not found; give the DAVIS-2017 folder that holds JPEGImages, Annotations, ImageSets")
    videos = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for video in videos:
        if problem := id_problem(video):
            raise DataError(f"{path}: video name {video!r} cannot be a folder name ({problem}); fix the list")
    return videos


def _video_sources(davis_root: Path, resolution: str, annotations: str, video: str) -> tuple[Path, Path]:
    """The frame and mask folders of one listed video; DataError when either is missing."""
    images = davis_root / "JPEGImages" / resolution / video
    masks = davis_root / annotations / resolution / video
    for folder in (images, masks):
        if not folder.is_dir():
            raise DataError(
                f"video {video!r} is listed in ImageSets/2017 but {folder} is missing; "
                f"re-extract DAVIS-2017 ({resolution}) or remove the video from the list"
            )
    return images, masks


def _categories(davis_root: Path) -> dict[str, dict[str, str]]:
    """{video: {object: category}} from the optional davis_semantics.json of the DAVIS-2017 semantics archive."""
    path = davis_root / "davis_semantics.json"
    if not path.is_file():
        return {}
    semantics = require_mapping(read_json(path), "the top level", path)
    return {
        str(video): {str(object_id): category for object_id, category in objects.items() if isinstance(category, str)}
        for video, objects in semantics.items()
        if isinstance(objects, dict)
    }


@dataclass(frozen=True)
class _ConvertedVideo:
    video_id: str
    objects: dict[str, dict]  # meta.json: {object: {category, frames}}
    entry: dict  # meta_expressions.json: {frames, expressions}
    masks: int

    @property
    def expressions_without_mask(self) -> int:
        return sum(item["obj_id"] not in self.objects for item in self.entry["expressions"].values())


def _convert_video(
    paths: SplitPaths,
    video: str,
    images: Path,
    annotations: Path,
    expressions: list[DavisExpression],
    categories: dict[str, str],
) -> _ConvertedVideo:
    """Place one video's frames and masks under `paths` and describe it for meta.json and meta_expressions.json.

    Objects are the ids found in the masks, each with the sorted frames whose mask shows it; expression keys
    are numbered in (annotator, kind, object) order.
    """
    frame_ids = sorted(path.stem for path in images.glob("*.jpg"))
    for frame_id in frame_ids:
        _place(images / f"{frame_id}.jpg", paths.frame_path(video, frame_id))
    masks = sorted(annotations.glob("*.png"))
    object_frames: dict[int, list[str]] = {}
    for mask in masks:
        _place(mask, paths.mask_path(video, mask.stem))
        for object_id in _mask_object_ids(mask):
            object_frames.setdefault(object_id, []).append(mask.stem)
    objects = {
        str(object_id): {"category": categories.get(str(object_id)), "frames": frames}
        for object_id, frames in sorted(object_frames.items())
    }
    ordered = sorted(expressions, key=lambda e: (e.annotator, KINDS.index(e.kind), int(e.object_id)))
    entry = {
        "frames": frame_ids,
        "expressions": {
            str(key): {"exp": e.text, "obj_id": e.object_id, "annotator": e.annotator, "kind": e.kind}
            for key, e in enumerate(ordered)
        },
    }
    return _ConvertedVideo(video, objects, entry, len(masks))


def _mask_object_ids(path: Path) -> list[int]:
    try:
        ids = np.unique(read_mask(path))
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read the mask ({error}); re-extract the DAVIS-2017 archive") from None
    return [int(value) for value in ids if value not in (0, _VOID)]


def _place(source: Path, target: Path) -> None:
    """Hard-link `source` at `target`, or copy it where links are impossible (another filesystem, no rights)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
