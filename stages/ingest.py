"""Ingest: a dataset (Ref-YouTube-VOS layout or merged new_<split>.json) -> a validated Parquet manifest.

File checks (JPEG decode, mask read) fan out as Ray tasks over batches of files; everything else is
bookkeeping in the driver. Bad items go to the quarantine table with their reason; the rest goes on.
The train split's label regime (`data.train_labels`) hides masks from training (prvos_core.data.regimes), and
the videos of `data.unlabelled_split` join the train split without their masks (prvos_core.data.validate).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import ClassVar

import ray

from prvos_core.config import IngestSection
from prvos_core.data import manifest as manifest_io
from prvos_core.data.file_checks import FileReport, check_files
from prvos_core.data.regimes import apply_label_regime
from prvos_core.data.review_layer import apply_corrections
from prvos_core.data.source import (
    RawVideo,
    SplitSource,
    files_on_disk,
    locate,
    read_split,
    read_unlabelled_split,
    split_exists,
)
from prvos_core.data.validate import VideoFiles, assemble, plan_checks
from stages._ray import gather
from stages.result import StageResult, output

log = logging.getLogger("prvos")


@dataclass(frozen=True)
class IngestInputs:
    dataset_root: str  # dataset folder or a new_<split>.json file
    splits: tuple[str, ...]  # e.g. ("train", "valid")
    out_dir: str  # the stage's folder in the run store
    train_split: str = "train"  # the split that the label regime applies to and the unlabelled videos join
    train_labels: str = "provided"  # data.train_labels: provided, first or every:K
    unlabelled_split: str | None = None  # data.unlabelled_split: a split of train videos whose masks are not read
    unlabelled_root: str | None = None  # the dataset root holding it (None: dataset_root)
    review_root: str | None = None  # the dataset's review layers (prvos_core.data.review_layer), None: none


@dataclass(frozen=True, kw_only=True)
class IngestResult(StageResult):
    """The manifest's three Parquet tables (prvos_core.data.manifest) and what ingest counted."""

    stage: ClassVar[str] = "ingest"
    videos_table: str = output("videos")
    expressions_table: str = output("expressions")
    quarantine_table: str = output("quarantine")
    videos: int
    expressions: int
    quarantined: int  # items set aside with their reason
    frames: int
    files_checked: int
    frames_per_second: float
    seconds: float
    check_seconds: float  # of the file checks on Ray
    splits: int
    unlabelled_videos: int = 0  # train videos from data.unlabelled_split (no masks read)
    hidden_frames: int = 0  # ground-truth frames (over expressions) that the label regime hid from training
    reviewed_frames: int = 0  # ground-truth frames (over expressions) that come from review layers

    @property
    def manifest_dir(self) -> str:
        """The folder of the tables (what prvos_core.data.manifest.read_manifest reads)."""
        return self.videos_table[: self.videos_table.replace("\\", "/").rfind("/")]


def run(inputs: IngestInputs, cfg: IngestSection) -> IngestResult:
    started = time.perf_counter()
    root, only_split = locate(inputs.dataset_root)
    splits = (only_split,) if only_split else inputs.splits
    present = [split for split in splits if split_exists(root, split)]
    if not present:
        read_split(root, splits[0])  # raises the DataError that names the files it looked for
    for split in sorted(set(splits) - set(present)):
        log.warning(
            "ingest: split %r has no meta_expressions.json or new_%s.json under %s; skipped", split, split, root
        )
    sources = [read_split(root, split) for split in present]
    videos = [_listed(source, raw) for source in sources for raw in source.videos]
    videos += _unlabelled_videos(inputs)
    checks = plan_checks(videos)
    checks_started = time.perf_counter()
    reports = _check_in_parallel(checks, cfg)
    check_seconds = time.perf_counter() - checks_started
    manifest = assemble(videos, reports, cfg.max_text_chars)
    manifest = apply_label_regime(manifest, inputs.train_labels, inputs.train_split)
    if inputs.review_root is not None:  # corrections people made count as ground truth, whatever the regime hid
        manifest = apply_corrections(manifest, inputs.review_root, inputs.train_split)
    tables = manifest_io.write_manifest(inputs.out_dir, manifest)
    seconds = time.perf_counter() - started
    frames = sum(1 for c in checks if c.kind == "frame")
    return IngestResult(
        videos_table=tables["videos"],
        expressions_table=tables["expressions"],
        quarantine_table=tables["quarantine"],
        videos=len(manifest.videos),
        expressions=len(manifest.expressions),
        quarantined=len(manifest.quarantine),
        frames=sum(v.n_frames for v in manifest.videos),
        files_checked=len(checks),
        frames_per_second=frames / seconds if seconds > 0 else 0.0,
        seconds=seconds,
        check_seconds=check_seconds,
        splits=len(present),
        unlabelled_videos=sum(not video.labelled for video in manifest.videos),
        hidden_frames=sum(len(expression.hidden_frames) for expression in manifest.expressions),
        reviewed_frames=sum(len(expression.reviewed_frames) for expression in manifest.expressions),
    )


def _listed(source: SplitSource, raw: RawVideo, joins_split: str | None = None) -> VideoFiles:
    """One video's files on disk; an unlabelled one (joining `joins_split`) without its masks."""
    jpegs, pngs = files_on_disk(source.dataset_root, source.split, raw.video_id)
    masks = tuple(sorted(pngs)) if joins_split is None else ()
    return VideoFiles(source, raw, tuple(sorted(jpegs)), masks, joins_split)


def _unlabelled_videos(inputs: IngestInputs) -> list[VideoFiles]:
    """The videos of `data.unlabelled_split`, as videos that join the train split (none when it is unset)."""
    if inputs.unlabelled_split is None:
        return []
    root, _ = locate(inputs.unlabelled_root or inputs.dataset_root)
    source = read_unlabelled_split(root, inputs.unlabelled_split)
    return [_listed(source, raw, inputs.train_split) for raw in source.videos]


@ray.remote(num_cpus=1)
def _check_batch(batch, decode: bool) -> list[FileReport]:
    return check_files(batch, decode=decode)


def _check_in_parallel(checks, cfg: IngestSection) -> dict[str, FileReport]:
    batches = [checks[i : i + cfg.chunk_frames] for i in range(0, len(checks), cfg.chunk_frames)]
    in_flight_limit = cfg.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    tasks = (_check_batch.remote(batch, cfg.check_images) for batch in batches)
    done = gather(tasks, [len(batch) for batch in batches], "ingest", unit="file", in_flight=2 * in_flight_limit)
    return {report.uri: report for reports in done for report in reports}
