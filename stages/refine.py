"""Refine: the round's teacher predictions -> training labels, weights and a frame choice per expression.

Two passes over the pseudo-label store, each as Ray tasks over chunks of expressions: (1) confidence
histograms of the non-ground-truth frames, merged into the round's per-class thresholds; (2) per expression,
`prvos_core.refine.refine_expression` -> refined labels (Zarr), frame decisions (Parquet) and a summary.
Where the split has `full_annotations/` (the synthetic set) the chosen pseudo-labelled frames are also scored
against them, refined and raw teacher alike: the measure of whether refinement helps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

from prvos_core import faults, storage
from prvos_core.frames import read_object_mask, resize_map
from prvos_core.layout import SplitPaths
from prvos_core.manifest import Expression, read_manifest
from prvos_core.progress import progress_bar
from prvos_core.pseudo_quality import QualityCounts, RefineSummary, pseudo_label_quality, teacher_quality
from prvos_core.pseudo_store import (
    FRAMES_FILE,
    REFINED_STORE,
    RefinedLabel,
    frames_table,
    open_store,
    read_pseudo_label,
    write_refined,
)
from prvos_core.refine import ConfidenceHistogram, RefineConfig, Thresholds, choose_thresholds, refine_expression
from stages.result import StageResult

CHUNK = 16  # expressions per task


@dataclass(frozen=True)
class RefineInputs:
    manifest_dir: str
    pseudo_store: str  # the infer stage's pseudo.zarr
    out_dir: str
    split: str = "train"
    fingerprint: str = ""
    round_index: int | None = None


def run(inputs: RefineInputs, cfg: RefineConfig) -> StageResult:
    started = time.perf_counter()
    manifest = read_manifest(inputs.manifest_dir)
    videos = {(v.split, v.video_id): v for v in manifest.videos}
    expressions = sorted(manifest.split_expressions(inputs.split), key=lambda e: e.expression_id)
    jobs = [[(e, videos[(e.split, e.video_id)].dataset_root) for e in expressions[i : i + CHUNK]]
            for i in range(0, len(expressions), CHUNK)]  # fmt: skip
    histogram = ConfidenceHistogram()
    for part in _gather(
        [_histogram.remote(job, inputs.pseudo_store) for job in jobs], "refine-thresholds", inputs, len(jobs)
    ):
        histogram.merge(part)
    thresholds = choose_thresholds(histogram, cfg)
    refined_uri = storage.join(inputs.out_dir, REFINED_STORE)
    open_store(refined_uri)  # created once here, before tasks add their groups
    summary, full_refined, full_teacher = RefineSummary(thresholds), QualityCounts(), QualityCounts()
    rows: dict[str, list] = {}
    tasks = [_refine.remote(job, inputs.pseudo_store, refined_uri, thresholds, cfg) for job in jobs]
    for part, part_rows, refined_full, teacher_full in _gather(tasks, "refine", inputs, len(jobs)):
        summary.merge(part)
        full_refined, full_teacher = full_refined + refined_full, full_teacher + teacher_full
        for key, values in part_rows.items():
            rows.setdefault(key, []).extend(values)
    order = sorted(range(len(rows.get("frame", []))), key=lambda i: (rows["expression_id"][i], rows["frame"][i]))
    frames_uri = storage.join(inputs.out_dir, FRAMES_FILE)
    storage.write_parquet(frames_uri, frames_table({key: [values[i] for i in order] for key, values in rows.items()}))
    report = summary.to_dict()
    report.update(_full_report(full_refined, full_teacher))
    report["seconds"] = time.perf_counter() - started
    summary_uri = storage.join(inputs.out_dir, "summary.json")
    storage.write_json(summary_uri, report)
    metrics = {key: float(value) for key, value in report.items() if value is not None}
    outputs = {"refined": refined_uri, "frames": frames_uri, "summary": summary_uri}
    return StageResult("refine", outputs, metrics, inputs.fingerprint)


def _gather(tasks: list, stage: str, inputs: RefineInputs, total: int):
    """Results of Ray tasks in completion order, with progress (chunks of expressions)."""
    with progress_bar(stage, total=total, unit="chunk", round_index=inputs.round_index) as bar:
        pending = list(tasks)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(1)
            yield ray.get(done[0])


def _ground_truth(expression: Expression, root: str, frame_ids, size, folder: str) -> dict[int, np.ndarray]:
    """frame index -> (h, w) 0/1 mask at the store's resolution, for the frames `folder` has masks of."""
    paths = SplitPaths(Path(root), expression.split)
    wanted = set(expression.gt_frames) if folder == "Annotations" else set(frame_ids)
    masks = {}
    for index, frame in enumerate(frame_ids):
        path = paths.split_dir / folder / expression.video_id / f"{frame}.png"
        if frame in wanted and expression.object_id and path.is_file():
            masks[index] = resize_map(read_object_mask(str(path), expression.object_id), size)
    return masks


@ray.remote(num_cpus=1)
def _histogram(job: list[tuple[Expression, str]], pseudo_uri: str) -> ConfidenceHistogram:
    # Only frames without ground truth: those are the ones whose pixels the thresholds decide about.
    store, histogram = open_store(pseudo_uri, mode="r"), ConfidenceHistogram()
    for expression, _ in job:
        label = read_pseudo_label(store, expression.expression_id)
        gt = set(expression.gt_frames)
        rows = [t for t, frame in enumerate(label.frame_ids) if frame not in gt]
        if rows:
            histogram.add(label.prob[rows])
    return histogram


@ray.remote(num_cpus=1)
def _refine(job, pseudo_uri: str, refined_uri: str, thresholds: Thresholds, cfg: RefineConfig):
    store, refined_store = open_store(pseudo_uri, mode="r"), open_store(refined_uri)
    summary, rows = RefineSummary(thresholds), {}
    full_refined, full_teacher = QualityCounts(), QualityCounts()
    for position, (expression, root) in enumerate(job):
        faults.maybe_fail("refine.expression", position)
        label = read_pseudo_label(store, expression.expression_id)
        size = label.prob.shape[1:]
        gt = _ground_truth(expression, root, label.frame_ids, size, "Annotations")
        refined = refine_expression(label.prob, label.uncertainty, thresholds, cfg, gt)
        summary.add(refined)
        chosen = tuple(label.frame_ids[t] for t in refined.pseudo_frames)
        write_refined(
            refined_store,
            RefinedLabel(expression.expression_id, label.frame_ids, refined.label, refined.weight, chosen,
                         tuple(label.frame_ids[t] for t in sorted(gt))),
        )  # fmt: skip
        full = _ground_truth(expression, root, chosen, size, "full_annotations")
        position_of = {frame: t for t, frame in enumerate(label.frame_ids)}
        for index, mask in full.items():
            t = position_of[chosen[index]]
            full_refined += pseudo_label_quality(refined.label[t], mask)
            full_teacher += teacher_quality(label.prob[t], mask)
        ranks = _ranks(refined)
        for decision in refined.frames:
            for key, value in (
                ("expression_id", expression.expression_id),
                ("frame", label.frame_ids[decision.frame_index]),
                ("source", decision.source),
                ("kept", decision.kept),
                ("rank", ranks.get(decision.frame_index)),
                ("mean_entropy", decision.mean_entropy),
                ("kept_ratio", decision.kept_ratio),
                ("reason", decision.reason),
            ):
                rows.setdefault(key, []).append(value)
    return summary, rows, full_refined, full_teacher


def _ranks(refined) -> dict[int, int]:
    candidates = [d for d in refined.frames if d.source == "pseudo_label"]
    candidates.sort(key=lambda d: (d.mean_entropy, d.frame_index))
    return {d.frame_index: rank for rank, d in enumerate(candidates, start=1)}


def _full_report(refined: QualityCounts, teacher: QualityCounts) -> dict[str, float | None]:
    """Chosen pseudo-labelled frames against full_annotations (None when there are none)."""
    if teacher.total == 0:
        return {}
    return {
        "pseudo_precision_full": refined.precision,
        "pseudo_recall_full": refined.recall,
        "pseudo_iou_full": refined.iou,
        "pseudo_coverage_full": refined.coverage,
        "teacher_precision_full": teacher.precision,
        "teacher_recall_full": teacher.recall,
        "teacher_iou_full": teacher.iou,
        "pixels_scored_full": float(teacher.total),
    }
