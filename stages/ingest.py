"""Ingest: a dataset (Ref-YouTube-VOS layout or merged new_<split>.json) -> a validated Parquet manifest.

File checks (JPEG decode, mask read) fan out as Ray tasks over batches of files; everything else is
bookkeeping in the driver. Bad items go to the quarantine table with their reason; the rest goes on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import ray

from prvos_core.config import IngestSection
from prvos_core.data import manifest as manifest_io
from prvos_core.data.file_checks import FileReport, check_files
from prvos_core.data.source import files_on_disk, locate, read_split, split_exists
from prvos_core.data.validate import VideoFiles, assemble, plan_checks
from prvos_core.progress import progress_bar
from stages.result import StageResult

log = logging.getLogger("prvos")


@dataclass(frozen=True)
class IngestInputs:
    dataset_root: str  # dataset folder or a new_<split>.json file
    splits: tuple[str, ...]  # e.g. ("train", "valid")
    out_dir: str  # the stage's folder in the run store
    fingerprint: str = ""


def run(inputs: IngestInputs, cfg: IngestSection) -> StageResult:
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
    videos = []
    for split in present:
        source = read_split(root, split)
        for raw in source.videos:
            jpegs, pngs = files_on_disk(source.dataset_root, split, raw.video_id)
            videos.append(VideoFiles(source, raw, tuple(sorted(jpegs)), tuple(sorted(pngs))))
    checks = plan_checks(videos)
    checks_started = time.perf_counter()
    reports = _check_in_parallel(checks, cfg)
    check_seconds = time.perf_counter() - checks_started
    result = assemble(videos, reports, cfg.max_text_chars)
    outputs = manifest_io.write_manifest(inputs.out_dir, result)
    seconds = time.perf_counter() - started
    frames = sum(1 for c in checks if c.kind == "frame")
    metrics = {
        "videos": float(len(result.videos)),
        "expressions": float(len(result.expressions)),
        "quarantined": float(len(result.quarantine)),
        "frames": float(sum(v.n_frames for v in result.videos)),
        "files_checked": float(len(checks)),
        "frames_per_second": frames / seconds if seconds > 0 else 0.0,
        "seconds": seconds,
        "check_seconds": check_seconds,
        "splits": float(len(present)),
    }
    return StageResult("ingest", outputs, metrics, inputs.fingerprint)


@ray.remote(num_cpus=1)
def _check_batch(batch, decode: bool) -> list[FileReport]:
    return check_files(batch, decode=decode)


def _check_in_parallel(checks, cfg: IngestSection) -> dict[str, FileReport]:
    batches = [checks[i : i + cfg.chunk_frames] for i in range(0, len(checks), cfg.chunk_frames)]
    in_flight_limit = cfg.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    reports: dict[str, FileReport] = {}
    pending: list = []
    with progress_bar("ingest", total=len(checks), unit="file") as bar:
        for batch in batches:
            if len(pending) >= 2 * in_flight_limit:
                pending = _collect(pending, reports, bar)
            pending.append(_check_batch.remote(batch, cfg.check_images))
        while pending:
            pending = _collect(pending, reports, bar)
    return reports


def _collect(pending: list, reports: dict[str, FileReport], bar) -> list:
    done, pending = ray.wait(pending, num_returns=1)
    for report in ray.get(done[0]):
        reports[report.uri] = report
        bar.update(1)
    return pending
