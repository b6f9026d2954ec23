"""From raw JSON records and file reports to a validated manifest, with every rejected item quarantined.

Rules (one quarantine row per rejected item, the rest goes on):
- frames listed in the JSON but absent on disk, and JPEGs on disk that the JSON does not list;
- JPEGs that are corrupt or truncated, or whose size differs from the rest of their video;
- masks that do not read, have colours outside the palette, or differ in size from their frame;
- expressions with unsafe object ids, non-string, empty, over-long or non-UTF-8 text, an object that is not in
  meta.json, an object that appears in no usable mask of its video, or a duplicate (same object, same text);
- videos with an unsafe id (`data.source`) or no usable frame;
- unlabelled videos (`data.unlabelled_split`) with no usable expression, or whose id is already a labelled
  video of the split they join.

Unlabelled videos join the train split with their files left in their own split folder (`Video.folder`); their
masks are never read, so their expressions have no ground truth and no "appears in no usable mask" rule.

Ground-truth frames of an expression are the annotated frames that show its object: a mask without the
object's id is not taken as "object absent", because sparse datasets label one new object per mask.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from prvos_core.data.file_checks import FileCheck, FileReport
from prvos_core.data.ids import expression_id
from prvos_core.data.layout import SplitPaths, has_bad_text, target_objects
from prvos_core.data.manifest import Expression, Manifest, QuarantineRow, Video
from prvos_core.data.source import RawVideo, SplitSource
from prvos_core.storage import dataset_path, id_problem


@dataclass(frozen=True)
class VideoFiles:
    """One video's files on disk, as found by listing its folders."""

    split_source: SplitSource
    video: RawVideo
    frames_on_disk: tuple[str, ...]
    masks_on_disk: tuple[str, ...]  # () for an unlabelled video: its masks, if any, are not read
    # Set for an unlabelled video: the split it joins in the manifest (the train split), while its files stay
    # in the folder of its own split (`split_source.split`).
    joins_split: str | None = None

    @property
    def labelled(self) -> bool:
        return self.joins_split is None

    @property
    def split(self) -> str:
        """The video's split in the manifest."""
        return self.joins_split or self.split_source.split

    @property
    def paths(self) -> SplitPaths:
        """Where its files are: the folder of the split it was read from."""
        return SplitPaths(dataset_path(self.split_source.dataset_root), self.split_source.split)

    def frame_uri(self, frame_id: str) -> str:
        return str(self.paths.frame_path(self.video.video_id, frame_id))

    def mask_uri(self, frame_id: str) -> str:
        return str(self.paths.mask_path(self.video.video_id, frame_id))

    @property
    def candidate_frames(self) -> list[str]:
        listed = self.video.listed_frames or self.frames_on_disk
        on_disk = set(self.frames_on_disk)
        return [f for f in listed if f in on_disk and id_problem(f) is None]


def plan_checks(videos: list[VideoFiles]) -> list[FileCheck]:
    """Every file that needs a look: the candidate frames and every mask PNG on disk (of admitted videos)."""
    checks = []
    taken = _labelled_ids(videos)
    for files in videos:
        if _unlabelled_problem(files, taken):
            continue
        checks.extend(FileCheck("frame", files.frame_uri(f)) for f in files.candidate_frames)
        checks.extend(FileCheck("mask", files.mask_uri(f)) for f in files.masks_on_disk if id_problem(f) is None)
    return checks


def assemble(videos: list[VideoFiles], reports: dict[str, FileReport], max_text_chars: int) -> Manifest:
    """Build the manifest from the listings and the file reports (keyed by URI)."""
    out_videos: list[Video] = []
    out_expressions: list[Expression] = []
    quarantine: list[QuarantineRow] = []
    taken = _labelled_ids(videos)
    for files in videos:
        if problem := _unlabelled_problem(files, taken):
            quarantine.append(QuarantineRow(files.split_source.source_file, files.video.video_id, problem))
            continue
        quarantine.extend(_quarantine_listing(files))
        video = _usable_video(files, reports, quarantine)
        if video is None:
            continue
        mask_ids = _usable_masks(files, video, reports, quarantine)
        video = replace(video, annotated_frames=tuple(sorted(mask_ids)))
        expressions = _usable_expressions(files, video, mask_ids, max_text_chars, quarantine)
        if not video.labelled and not expressions:
            reason = "unlabelled video has no usable expression (see its expressions' rows); nothing refers to it"
            quarantine.append(QuarantineRow(files.split_source.source_file, video.video_id, reason))
            continue
        out_videos.append(video)
        out_expressions.extend(expressions)
    sources = {files.split_source.source_file: files.split_source for files in videos}
    split_rows = [row for source in sources.values() for row in source.quarantine]
    return Manifest(tuple(out_videos), tuple(out_expressions), tuple(split_rows + quarantine))


def _labelled_ids(videos: list[VideoFiles]) -> set[tuple[str, str]]:
    """(split, video id) of the labelled videos listed: an unlabelled video may not take one of these ids."""
    return {(files.split, files.video.video_id) for files in videos if files.labelled}


def _unlabelled_problem(files: VideoFiles, taken: set[tuple[str, str]]) -> str | None:
    """Why an unlabelled video cannot join its split before any file is looked at; None if it can (or is labelled)."""
    if files.labelled:
        return None
    if (files.split, files.video.video_id) in taken:
        return (
            f"video id is already a labelled video of split {files.split!r}; an unlabelled video must have an id "
            "of its own (rename it or drop it from one of the splits)"
        )
    if not files.video.expressions:
        return "unlabelled video has no expression; the teacher labels expressions, so nothing refers to it"
    return None


def _quarantine_listing(files: VideoFiles) -> list[QuarantineRow]:
    rows = []
    vid, source = files.video.video_id, files.split_source.source_file
    on_disk, listed = set(files.frames_on_disk), set(files.video.listed_frames)
    if not files.frames_on_disk:
        rows.append(QuarantineRow(source, vid, "no JPEG frames on disk for this video"))
        return rows
    for frame in files.video.listed_frames:
        if id_problem(frame):
            rows.append(QuarantineRow(source, f"{vid}/{frame}", f"unsafe frame id: {id_problem(frame)}"))
        elif frame not in on_disk:
            rows.append(QuarantineRow(source, f"{vid}/{frame}.jpg", "frame listed in the JSON but missing on disk"))
    if files.video.listed_frames:
        for frame in files.frames_on_disk:
            if frame not in listed:
                rows.append(
                    QuarantineRow(
                        files.frame_uri(frame), f"{vid}/{frame}.jpg", "frame on disk but not listed in the JSON"
                    )
                )
    return rows


def _usable_video(files: VideoFiles, reports: dict[str, FileReport], quarantine: list) -> Video | None:
    vid = files.video.video_id
    decoded = []
    for frame in files.candidate_frames:
        report = reports[files.frame_uri(frame)]
        if report.problem:
            quarantine.append(QuarantineRow(report.uri, f"{vid}/{frame}.jpg", report.problem))
        else:
            decoded.append((frame, report))
    if not decoded:
        if files.frames_on_disk:
            quarantine.append(QuarantineRow(files.split_source.source_file, vid, "video has no usable frame"))
        return None
    # The video's size is the size most of its frames have; the odd ones out are quarantined.
    (height, width), _ = Counter((r.height, r.width) for _, r in decoded).most_common(1)[0]
    frames = []
    for frame, report in decoded:
        if (report.height, report.width) != (height, width):
            reason = f"frame is {report.width}x{report.height} but the video is {width}x{height}"
            quarantine.append(QuarantineRow(report.uri, f"{vid}/{frame}.jpg", reason))
        else:
            frames.append(frame)
    folder = "" if files.labelled else files.split_source.split
    root = files.split_source.dataset_root
    return Video(vid, files.split, root, tuple(sorted(frames)), (), height, width, files.labelled, folder)


def _usable_masks(files: VideoFiles, video: Video, reports: dict[str, FileReport], quarantine: list) -> dict:
    """Object ids present in each usable mask, by frame id."""
    frames = set(video.frame_ids)
    mask_ids: dict[str, set[int]] = {}
    for frame in files.masks_on_disk:
        item = f"{video.video_id}/{frame}.png"
        if id_problem(frame):
            quarantine.append(QuarantineRow(files.mask_uri(frame), item, f"unsafe frame id: {id_problem(frame)}"))
            continue
        report = reports[files.mask_uri(frame)]
        if report.problem:
            quarantine.append(QuarantineRow(report.uri, item, report.problem))
        elif frame not in frames:
            quarantine.append(QuarantineRow(report.uri, item, "mask has no usable frame of the same id"))
        elif (report.height, report.width) != (video.height, video.width):
            reason = f"mask is {report.width}x{report.height} but its frame is {video.width}x{video.height}"
            quarantine.append(QuarantineRow(report.uri, item, reason))
        else:
            mask_ids[frame] = set(report.object_ids)
    return mask_ids


def _usable_expressions(files, video: Video, mask_ids: dict, max_chars: int, quarantine: list) -> list[Expression]:
    source, vid = files.split_source.source_file, video.video_id
    objects = files.video.objects
    seen: dict[tuple[str, str], str] = {}
    result = []
    for raw in files.video.expressions:
        item = f"{vid}/expression {raw.key}"
        # The key names a folder of the Ref-YouTube-VOS submission zip (Annotations/<video>/<key>/...).
        key_problem = id_problem(raw.key) and f"unsafe expression key: {id_problem(raw.key)}"
        problem = key_problem or _text_problem(raw.text, max_chars) or _object_problem(raw.object_id, objects, mask_ids)
        if problem:
            quarantine.append(QuarantineRow(source, item, problem))
            continue
        text = raw.text.strip()
        variant = f"{raw.annotator or ''}{raw.kind or ''}"
        duplicate_key = (raw.object_id, variant, " ".join(text.lower().split()))
        if duplicate_key in seen:
            quarantine.append(QuarantineRow(source, item, f"duplicate of expression {seen[duplicate_key]}"))
            continue
        seen[duplicate_key] = raw.key
        known = objects.get(raw.object_id) if objects else None
        gt_frames = _gt_frames(raw.object_id, known, mask_ids)
        result.append(
            Expression(
                expression_id(vid, raw.object_id, text, variant),
                raw.key,
                video.split,
                vid,
                raw.object_id,
                known.category if known else None,
                text,
                gt_frames,
                video.frame_ids,
                raw.annotator,
                raw.kind,
            )
        )
    return result


def _text_problem(text, max_chars: int) -> str | None:
    if not isinstance(text, str):
        return f"expression text is a {type(text).__name__}, not a string"
    if has_bad_text(text):
        return "expression text is not valid UTF-8"
    if not text.strip():
        return "expression text is empty"
    if len(text) > max_chars:
        return f"expression text has {len(text)} characters, more than ingest.max_text_chars={max_chars}"
    return None


def _object_problem(object_id: str, objects: dict | None, mask_ids: dict[str, set[int]]) -> str | None:
    if object_id == "":
        return None
    if problem := id_problem(object_id):
        return f"unsafe object id: {problem}"
    parts = target_objects(object_id)
    if parts is None:
        return f"object id {object_id!r} is not a number, nor numbers joined by '-' (mask pixel values are object ids)"
    for part in parts:  # several for an expression that refers to several objects (MeViS)
        if objects is not None and part not in objects:
            return f"object {part} is not in meta.json for this video"
        if mask_ids and not any(int(part) in ids for ids in mask_ids.values()):
            return f"object {part} appears in no usable mask of this video"
    return None


def _gt_frames(object_id: str, known, mask_ids: dict[str, set[int]]) -> tuple[str, ...]:
    if object_id == "":
        return ()
    numbers = {int(part) for part in target_objects(object_id)}
    shown = [frame for frame, ids in mask_ids.items() if numbers & ids]
    if known is not None:
        listed = set(known.frames)
        shown = [frame for frame in shown if frame in listed]
    return tuple(sorted(shown))
