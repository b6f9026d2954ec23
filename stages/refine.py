"""Refine: the round's teacher predictions -> training labels, weights and a frame choice per expression.

Two passes over the pseudo-label store, each as Ray tasks over fixed chunks of expressions (sorted by id):
(1) confidence histograms of the non-ground-truth frames, merged into the round's per-class thresholds;
(2) per expression, `prvos_core.pseudo.refine.refine_expression` -> refined labels (Zarr, one writer per expression),
frame decisions (Parquet) and a summary. The chosen pseudo-labelled frames that have a mask training never
sees are also scored against it, refined and raw teacher alike: the measure of whether refinement helps. Those
masks are `full_annotations/` where the video's split folder has it (the synthetic set), else the frames the
label regime hid in `Annotations/` (`prvos_core.data.object_masks`); the `*_full` summary keys hold both.
Refinement itself only sees the expression's GT frames. A re-run recomputes everything and writes the same bytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import ray

from prvos_core import faults, storage
from prvos_core.config import RefineSection
from prvos_core.data.manifest import Expression, Video, read_manifest
from prvos_core.data.object_masks import ground_truth_masks, scoring_masks
from prvos_core.errors import StorageError
from prvos_core.pseudo.quality import QualityCounts, frames_quality, quality_metrics
from prvos_core.pseudo.refine import RefineSummary, refine_expression
from prvos_core.pseudo.store import (
    FRAMES_FILE,
    REFINED_STORE,
    PseudoLabel,
    RefinedLabel,
    committed_expressions,
    frame_decision_rows,
    open_store,
    read_pseudo_label,
    write_frame_decisions,
    write_refined,
)
from prvos_core.pseudo.thresholds import ConfidenceHistogram, Thresholds, choose_thresholds
from stages._ray import gather
from stages.result import StageResult, measures, output

CHUNK = 16  # expressions per Ray task: fixed, so the chunks (and the output) never depend on the cluster size
SUMMARY_FILE = "summary.json"

Job = tuple[Expression, Video]


@dataclass(frozen=True)
class RefineInputs:
    manifest_dir: str
    pseudo_store: str  # the infer stage's <dir>/pseudo.zarr
    out_dir: str
    split: str = "train"
    round_index: int | None = None


@dataclass(frozen=True, kw_only=True)
class RefineResult(StageResult):
    stage: ClassVar[str] = "refine"
    refined: str = output()  # the refined labels, <dir>/refined.zarr
    frames: str = output()  # one decision per (expression, frame), <dir>/frames.parquet
    summary: str = output()  # summary.json: `report` with nulls where nothing was measured
    # summary.json's numbers: thresholds, frame counts, kept ratio, pseudo-label and teacher quality (on the
    # ground-truth frames, and `*_full` on the chosen frames' masks that training never sees, where there are any).
    report: dict[str, float] = measures()
    seconds: float


@dataclass(frozen=True)
class ChunkResult:
    """What one pass-2 task reports: its summary, frame rows and scores against the masks training never sees."""

    summary: RefineSummary
    rows: list[dict]  # FRAMES_SCHEMA rows, expressions in chunk order, frames in frame order
    full_refined: QualityCounts  # refined labels of the chosen pseudo-labelled frames vs their dense masks
    full_teacher: QualityCounts  # the raw teacher on the same frames


def run(inputs: RefineInputs, cfg: RefineSection) -> RefineResult:
    started = time.perf_counter()
    manifest = read_manifest(inputs.manifest_dir)
    expressions = sorted(manifest.split_expressions(inputs.split), key=lambda e: e.expression_id)
    _require_committed(inputs.pseudo_store, [e.expression_id for e in expressions])
    jobs = [(e, manifest.video_of(e)) for e in expressions]
    chunks = [jobs[i : i + CHUNK] for i in range(0, len(jobs), CHUNK)]
    sizes = [len(chunk) for chunk in chunks]

    histogram = ConfidenceHistogram()
    tasks = [_histogram.remote(chunk, inputs.pseudo_store) for chunk in chunks]
    for part in gather(tasks, sizes, "refine thresholds", unit="expression", round_index=inputs.round_index):
        histogram.merge(part)
    thresholds = choose_thresholds(histogram, cfg)

    refined_uri = storage.join(inputs.out_dir, REFINED_STORE)
    # A re-run recomputes: nothing of an earlier attempt (e.g. expressions no longer in the manifest) survives.
    storage.remove(refined_uri)
    open_store(refined_uri)  # the root group, created once before the tasks add theirs
    tasks = [_refine.remote(chunk, inputs.pseudo_store, refined_uri, thresholds, cfg) for chunk in chunks]
    summary = RefineSummary(thresholds)
    full_refined, full_teacher = QualityCounts(), QualityCounts()
    rows: list[dict] = []
    for part in gather(tasks, sizes, "refine", unit="expression", round_index=inputs.round_index):
        summary.merge(part.summary)
        full_refined, full_teacher = full_refined + part.full_refined, full_teacher + part.full_teacher
        rows.extend(part.rows)

    frames_uri = storage.join(inputs.out_dir, FRAMES_FILE)
    write_frame_decisions(frames_uri, rows)
    # summary.json holds no timing, so a re-run writes the same bytes; None stays null there.
    report = {
        **summary.to_dict(),
        **quality_metrics(full_refined, full_teacher, "_full"),
        "pixels_scored_full": full_teacher.total,
    }
    summary_uri = storage.join(inputs.out_dir, SUMMARY_FILE)
    storage.write_json(summary_uri, report)
    return RefineResult(
        refined=refined_uri,
        frames=frames_uri,
        summary=summary_uri,
        report={key: float(value) for key, value in report.items() if value is not None},
        seconds=time.perf_counter() - started,
    )


def _require_committed(pseudo_uri: str, expression_ids: list[str]) -> None:
    """Every expression of the split must have committed pseudo-labels; a half-written one is never used."""
    missing = sorted(set(expression_ids) - committed_expressions(open_store(pseudo_uri, mode="r")))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise StorageError(
            f"{pseudo_uri}: no committed pseudo-labels for expression(s) {shown} (infer stopped before writing "
            "them); resume the run so infer finishes them"
        )


@ray.remote(num_cpus=1)
def _histogram(chunk: list[Job], pseudo_uri: str) -> ConfidenceHistogram:
    # Only frames without ground truth: their pixels are the ones the thresholds decide about. The teacher's
    # predictions on GT frames are never trained on, and (often the first frame, propagated from its GT mask)
    # more confident than the rest, so counting them would raise the thresholds for the frames that matter.
    store, histogram = open_store(pseudo_uri, mode="r"), ConfidenceHistogram()
    for expression, video in chunk:
        pseudo = _read(store, pseudo_uri, expression, video)
        gt = set(expression.gt_frames)
        rows = [t for t, frame in enumerate(pseudo.frame_ids) if frame not in gt]
        if rows:
            histogram.add(pseudo.prob[rows])
    return histogram


@ray.remote(num_cpus=1)
def _refine(chunk: list[Job], pseudo_uri: str, refined_uri: str, thresholds: Thresholds, cfg: RefineSection):
    store, refined_store = open_store(pseudo_uri, mode="r"), open_store(refined_uri)
    summary, rows = RefineSummary(thresholds), []
    full_refined, full_teacher = QualityCounts(), QualityCounts()
    for position, (expression, video) in enumerate(chunk):
        faults.maybe_fail("refine.expression", position)
        pseudo = _read(store, pseudo_uri, expression, video)
        size = pseudo.prob.shape[1:]
        gt = ground_truth_masks(expression, video, size)
        refined = refine_expression(pseudo.prob, pseudo.uncertainty, thresholds, cfg, gt)
        summary.add(refined)
        dense = scoring_masks(expression, video, refined.pseudo_frames, size)
        scored = frames_quality(refined.label, pseudo.prob, dense)
        if cfg.oracle_labels:
            for t, mask in dense.items():
                refined.label[t], refined.weight[t] = mask, 1.0
        write_refined(
            refined_store,
            RefinedLabel(
                expression.expression_id,
                pseudo.frame_ids,
                refined.label,
                refined.weight,
                tuple(pseudo.frame_ids[t] for t in refined.pseudo_frames),
                tuple(pseudo.frame_ids[t] for t in sorted(gt)),
            ),
        )
        full_refined, full_teacher = full_refined + scored[0], full_teacher + scored[1]
        rows.extend(frame_decision_rows(expression.expression_id, pseudo.frame_ids, refined.frames))
    return ChunkResult(summary, rows, full_refined, full_teacher)


def _read(store, pseudo_uri: str, expression: Expression, video: Video) -> PseudoLabel:
    pseudo = read_pseudo_label(store, expression.expression_id)
    if pseudo.frame_ids != video.frame_ids:
        raise StorageError(
            f"{pseudo_uri}: expression {expression.expression_id} was labelled on other frames than video "
            f"{video.video_id} has in the manifest (another ingest?); re-run infer on this manifest"
        )
    return pseudo
