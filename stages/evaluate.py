"""Evaluate: a round's student on a split, by referring segmentation from the text alone (by default).

The student's weights (not the EMA teacher's) run in the same actor pool as infer (stages._ray); predictions are
upsampled to the original frame size and thresholded at 0.5.

With ground truth: per-expression J, F, J&F over the expression's annotated frames (DAVIS-2017 definitions) in
a Parquet table, and the overall J, F, JF, P0.5..P0.9 and overall IoU (cumulative intersection over union,
accumulated from per-expression counts); with Ref-DAVIS17 annotator tags, also J, F, JF and P0.5..P0.9 per
annotator and their mean. Metric names keep to what MLflow accepts ("J&F" -> "JF", "P@0.5" -> "P0.5").
Without ground truth (Ref-YouTube-VOS valid): the submission zip, `Annotations/<video>/<exp_key>/<frame>.png`
(single-channel 0/255 masks at the original size, every frame of every expression).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pyarrow as pa

from prvos_core import storage
from prvos_core.config import EvaluateSection
from prvos_core.data.frames import read_object_mask
from prvos_core.data.manifest import Expression, Video
from prvos_core.inference.predict import VideoFrames, check_prediction_inputs, upsample_prob
from prvos_core.labels import binary_mask
from prvos_core.metrics import cumulative_iou, evaluate_expression, iou_counts, summarize, summarize_groups
from stages._ray import ModelInputs, PredictorActor, run_pool, work_units, write_placement
from stages.result import StageResult, measures, output

log = logging.getLogger("prvos")

PER_EXPRESSION_FILE = "per_expression.parquet"
METRICS_FILE = "metrics.json"
SUBMISSION_FILE = "submission.zip"
PER_EXPRESSION_SCHEMA = pa.schema(
    [
        ("expression_id", pa.string()),
        ("video_id", pa.string()),
        ("exp_key", pa.string()),
        ("object_id", pa.string()),
        ("annotator", pa.int8()),
        ("kind", pa.string()),
        ("J", pa.float64()),
        ("F", pa.float64()),
        ("JF", pa.float64()),
        ("n_frames", pa.int32()),  # annotated frames scored
    ]
)


EvaluateInputs = ModelInputs  # the same fields as the other model stage; named for readers of this stage


@dataclass(frozen=True, kw_only=True)
class EvaluateResult(StageResult):
    """With ground truth: the scores and their files; without: the submission zip (and no scores)."""

    stage: ClassVar[str] = "evaluate"
    per_expression: str | None = output(default=None)  # PER_EXPRESSION_FILE
    metrics_file: str | None = output("metrics", default=None)  # METRICS_FILE: the scores and counts below
    placement: str | None = output(default=None)
    submission: str | None = output(default=None)  # SUBMISSION_FILE
    # J, F, JF, P0.5..P0.9, overall_iou; with annotator tags the same (but overall_iou) as <name>_annotator<a>
    # and <name>_annotator_mean.
    scores: dict[str, float] = measures()
    expressions: int
    unscored: int | None = None  # expressions without an annotated frame (scored runs only)
    frames: int  # annotated frames scored, or frames in the submission
    seconds: float
    nodes: int | None = None  # scored runs only


def run(inputs: EvaluateInputs, cfg: EvaluateSection) -> EvaluateResult:
    started = time.perf_counter()
    manifest, expressions = check_prediction_inputs(
        inputs.manifest_dir, inputs.split, inputs.checkpoint, inputs.text_cache, inputs.text_identity
    )
    if not any(e.gt_frames for e in expressions):
        return _submission(inputs, cfg, expressions, started)

    scored = [e for e in expressions if e.gt_frames]
    if len(scored) < len(expressions):
        log.info("evaluate: %d expressions have no annotated frame; not scored", len(expressions) - len(scored))
    placement = Counter()
    pool = run_pool(
        StudentActor, (inputs, cfg, False), work_units(scored, cfg.share_frames), cfg, label="evaluate",
        round_index=inputs.round_index, placement=placement,
    )  # fmt: skip
    scores = {row["expression_id"]: row for expression_rows in pool for row in expression_rows}
    rows = [(e, scores[e.expression_id]) for e in sorted(scored, key=lambda e: e.expression_id)]
    table_uri = storage.join(inputs.out_dir, PER_EXPRESSION_FILE)
    storage.write_parquet(table_uri, _per_expression_table(rows))
    metrics_uri = storage.join(inputs.out_dir, METRICS_FILE)
    result = EvaluateResult(
        per_expression=table_uri,
        metrics_file=metrics_uri,
        placement=write_placement(inputs.out_dir, placement, "expressions"),
        scores=overall_metrics(rows),
        expressions=len(rows),
        unscored=len(expressions) - len(rows),
        frames=sum(score["n_frames"] for _, score in rows),
        seconds=time.perf_counter() - started,
        nodes=len(placement),
    )
    storage.write_json(metrics_uri, result.metrics)
    return result


def overall_metrics(rows: list[tuple[Expression, dict]]) -> dict[str, float]:
    """J, F, JF, P0.5..P0.9 and overall IoU over the scored expressions; with Ref-DAVIS17's annotator tags, J, F,
    JF and P0.5..P0.9 of each annotator's expressions (`<name>_annotator<a>`) and their mean
    (`<name>_annotator_mean`), the community protocol."""
    metrics = _mlflow_names(summarize([s["J"] for _, s in rows], [s["F"] for _, s in rows]))
    metrics["overall_iou"] = cumulative_iou([s["intersection"] for _, s in rows], [s["union"] for _, s in rows])
    tagged = [(e.annotator, score) for e, score in rows if e.annotator is not None]
    if tagged:
        groups, mean = summarize_groups(
            [a for a, _ in tagged], [s["J"] for _, s in tagged], [s["F"] for _, s in tagged]
        )
        for annotator, table in groups.items():
            metrics.update({f"{key}_annotator{annotator}": value for key, value in _mlflow_names(table).items()})
        metrics.update({f"{key}_annotator_mean": value for key, value in _mlflow_names(mean).items()})
    return metrics


def _mlflow_names(table: dict[str, float]) -> dict[str, float]:
    """A prvos_core.metrics table with MLflow-safe names ("J&F" -> "JF", "P@0.5" -> "P0.5")."""
    return {key.replace("J&F", "JF").replace("P@", "P"): float(value) for key, value in table.items()}


def _per_expression_table(rows: list[tuple[Expression, dict]]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "expression_id": e.expression_id,
                "video_id": e.video_id,
                "exp_key": e.exp_key,
                "object_id": e.object_id,
                "annotator": e.annotator,
                "kind": e.kind,
                "J": score["J"],
                "F": score["F"],
                "JF": (score["J"] + score["F"]) / 2,
                "n_frames": score["n_frames"],
            }
            for e, score in rows
        ],
        schema=PER_EXPRESSION_SCHEMA,
    )


def _submission(
    inputs: EvaluateInputs, cfg: EvaluateSection, expressions: list[Expression], started: float,
) -> EvaluateResult:  # fmt: skip
    """The Ref-YouTube-VOS submission zip. Actors send back each frame's PNG (a few KB), so no staging folder
    has to be shared between nodes; the zip is built locally and published whole."""
    uri = storage.join(inputs.out_dir, SUBMISSION_FILE)
    with tempfile.TemporaryDirectory(prefix="prvos-submission-") as folder:
        archive = os.path.join(folder, SUBMISSION_FILE)
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as bundle:
            pool = run_pool(
                StudentActor, (inputs, cfg, True), work_units(expressions, cfg.share_frames), cfg,
                label="evaluate", round_index=inputs.round_index,
            )  # fmt: skip
            written = 0
            for row in (row for expression_rows in pool for row in expression_rows):
                # PNG is compressed already: stored, not deflated again.
                bundle.writestr(row["path"], row["png"])
                written += 1
        storage.write_bytes(uri, Path(archive).read_bytes())
    return EvaluateResult(
        submission=uri, expressions=len(expressions), frames=written, seconds=time.perf_counter() - started
    )


class StudentActor(PredictorActor):
    """One student replica: predicts every frame of an expression from its text, then scores it against the
    ground truth or encodes its masks for the submission."""

    fault_point = "evaluate.expression"

    def __init__(self, inputs: EvaluateInputs, cfg: EvaluateSection, submission: bool) -> None:
        super().__init__(inputs, cfg, "student")
        self.submission = submission

    def handle(self, expression: Expression, video: Video, frames: VideoFrames) -> list[dict]:
        return self.encode(expression, video, frames) if self.submission else self.score(expression, video, frames)

    def masks(self, expression: Expression, video: Video, frames: VideoFrames):
        """Yield (frame id, predicted mask (H, W) uint8 0/1 at the original size) for every frame."""
        predictions = self.predictor.predict(
            expression, video, self.inputs.input_size, first_mask_from_gt=self.cfg.first_frame_gt, frames=frames
        )
        for index, prob in predictions:
            yield video.frame_ids[index], binary_mask(upsample_prob(prob, (video.height, video.width)))

    def score(self, expression: Expression, video: Video, frames: VideoFrames) -> list[dict]:
        """J and F over the expression's annotated frames, and its intersection and union pixel counts."""
        paths = video.paths
        annotated = set(expression.gt_frames)
        truths, predictions = [], []
        for frame, mask in self.masks(expression, video, frames):
            if frame in annotated:
                predictions.append(mask)
                truths.append(read_object_mask(str(paths.mask_path(video.video_id, frame)), expression.object_id))
        gt, pred = np.stack(truths), np.stack(predictions)
        result = evaluate_expression(gt, pred, bound_th=self.cfg.bound_th)
        intersection, union = iou_counts(gt, pred)
        return [
            {
                "expression_id": expression.expression_id,
                "J": result["J"],
                "F": result["F"],
                "n_frames": len(truths),
                "intersection": intersection,
                "union": union,
            }
        ]

    def encode(self, expression: Expression, video: Video, frames: VideoFrames) -> list[dict]:
        """One row per frame: the mask's path in the submission and its single-channel 0/255 PNG."""
        rows = []
        for frame, mask in self.masks(expression, video, frames):
            encoded, png = cv2.imencode(".png", mask * np.uint8(255))
            assert encoded, "OpenCV encodes any uint8 (H, W) array as PNG"
            path = f"Annotations/{video.video_id}/{expression.exp_key}/{frame}.png"
            rows.append({"expression_id": expression.expression_id, "path": path, "png": png.tobytes()})
        return rows
