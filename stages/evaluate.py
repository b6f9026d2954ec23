"""Evaluate: a round's student on a split, by referring segmentation from the text alone (by default).

The student's weights (not the EMA teacher's) run in the same Ray Data actor pool as infer; predictions are
upsampled to the original frame size and thresholded at 0.5.

With ground truth: per-expression J, F, J&F over the expression's annotated frames (DAVIS-2017 definitions) in
a Parquet table, and the overall J, F, JF, P0.5..P0.9 and overall IoU (cumulative intersection over union,
accumulated from per-expression counts); with Ref-DAVIS17 annotator tags, also J, F, JF per annotator and
their mean. Metric names keep to what MLflow accepts ("J&F" -> "JF", "P@0.5" -> "P0.5").
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
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa

from prvos_core import storage
from prvos_core.config import EvaluateSection
from prvos_core.data.frames import read_object_mask
from prvos_core.data.layout import SplitPaths
from prvos_core.data.manifest import Expression, Video
from prvos_core.inference.predict import upsample_prob
from prvos_core.metrics import evaluate_expression, summarize
from stages.model_pool import ModelInputs, ModelReplica, prepare, rows_batch, run_pool
from stages.placement import write_placement
from stages.result import StageResult

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


def run(inputs: EvaluateInputs, cfg: EvaluateSection) -> StageResult:
    started = time.perf_counter()
    manifest, expressions = prepare(inputs)
    if not any(e.gt_frames for e in expressions):
        return _submission(inputs, cfg, manifest.videos, expressions, started)

    scored = [e for e in expressions if e.gt_frames]
    if len(scored) < len(expressions):
        log.info("evaluate: %d expressions have no annotated frame; not scored", len(expressions) - len(scored))
    placement = Counter()
    pool = run_pool(
        StudentActor,
        {"inputs": inputs, "cfg": cfg, "submission": False},
        {e.expression_id: 1 for e in scored},
        cfg,
        stage="evaluate",
        round_index=inputs.round_index,
        placement=placement,
    )
    scores = {row["expression_id"]: row for row in pool}
    rows = [(e, scores[e.expression_id]) for e in sorted(scored, key=lambda e: e.expression_id)]
    table_uri = storage.join(inputs.out_dir, PER_EXPRESSION_FILE)
    storage.write_parquet(table_uri, _per_expression_table(rows))
    metrics = overall_metrics(rows)
    metrics.update(
        {
            "expressions": float(len(rows)),
            "unscored": float(len(expressions) - len(rows)),
            "frames": float(sum(score["n_frames"] for _, score in rows)),
            "seconds": time.perf_counter() - started,
            "nodes": float(len(placement)),
        }
    )
    metrics_uri = storage.join(inputs.out_dir, METRICS_FILE)
    storage.write_json(metrics_uri, metrics)
    outputs = {
        "per_expression": table_uri,
        "metrics": metrics_uri,
        "placement": write_placement(inputs.out_dir, placement, "expressions"),
    }
    return StageResult("evaluate", outputs, metrics, inputs.fingerprint)


def overall_metrics(rows: list[tuple[Expression, dict]]) -> dict[str, float]:
    """J, F, JF, P0.5..P0.9 and overall IoU over the scored expressions; per annotator and the mean over
    annotators when the expressions are tagged (Ref-DAVIS17)."""
    metrics = _table([score for _, score in rows])
    intersection = sum(score["intersection"] for _, score in rows)
    union = sum(score["union"] for _, score in rows)
    # As prvos_core.metrics.overall_iou, from counts: an empty cumulative union scores 1.
    metrics["overall_iou"] = intersection / union if union else 1.0
    annotators = sorted({e.annotator for e, _ in rows if e.annotator is not None})
    for annotator in annotators:
        own = _table([score for e, score in rows if e.annotator == annotator])
        for key in ("J", "F", "JF"):
            metrics[f"{key}_annotator{annotator}"] = own[key]
    if annotators:
        for key in ("J", "F", "JF"):
            metrics[f"{key}_annotator_mean"] = float(np.mean([metrics[f"{key}_annotator{a}"] for a in annotators]))
    return metrics


def _table(scores: list[dict]) -> dict[str, float]:
    """prvos_core.metrics.summarize with MLflow-safe names."""
    table = summarize([s["J"] for s in scores], [s["F"] for s in scores])
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
    inputs: EvaluateInputs, cfg: EvaluateSection, videos: tuple[Video, ...], expressions: list[Expression],
    started: float,
) -> StageResult:  # fmt: skip
    """The Ref-YouTube-VOS submission zip. Actors send back each frame's PNG (a few KB), so no staging folder
    has to be shared between nodes; the zip is built locally and published whole."""
    frames = {(v.split, v.video_id): v.n_frames for v in videos}
    rows_per_expression = {e.expression_id: frames[(e.split, e.video_id)] for e in expressions}
    uri = storage.join(inputs.out_dir, SUBMISSION_FILE)
    with tempfile.TemporaryDirectory(prefix="prvos-submission-") as folder:
        archive = os.path.join(folder, SUBMISSION_FILE)
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as bundle:
            pool = run_pool(
                StudentActor,
                {"inputs": inputs, "cfg": cfg, "submission": True},
                rows_per_expression,
                cfg,
                stage="evaluate",
                round_index=inputs.round_index,
            )
            written = 0
            for row in pool:
                # PNG is compressed already: stored, not deflated again.
                bundle.writestr(row["path"], row["png"])
                written += 1
        storage.write_bytes(uri, Path(archive).read_bytes())
    metrics = {
        "expressions": float(len(expressions)),
        "frames": float(written),
        "seconds": time.perf_counter() - started,
    }
    return StageResult("evaluate", {"submission": uri}, metrics, inputs.fingerprint)


class StudentActor:
    """One student replica: predicts every frame of an expression from its text, then scores it against the
    ground truth or encodes its masks for the submission."""

    def __init__(self, inputs: EvaluateInputs, cfg: EvaluateSection, submission: bool) -> None:
        self.replica = ModelReplica(
            inputs.manifest_dir, inputs.split, inputs.text_cache, inputs.text_identity, inputs.checkpoint,
            "student", cfg,
        )  # fmt: skip
        self.inputs, self.cfg, self.submission = inputs, cfg, submission

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        return rows_batch(self.encode if self.submission else self.score, batch)

    def masks(self, expression: Expression, video: Video):
        """Yield (frame id, predicted mask (H, W) uint8 0/1 at the original size) for every frame."""
        predictions = self.replica.predict(
            expression, video, self.inputs.input_size, first_mask_from_gt=self.cfg.first_frame_gt
        )
        for index, prob in predictions:
            yield video.frame_ids[index], (upsample_prob(prob, (video.height, video.width)) > 0.5).astype(np.uint8)

    def score(self, expression_id: str) -> list[dict]:
        """J and F over the expression's annotated frames, and its intersection and union pixel counts."""
        expression, video = self.replica.records(expression_id, "evaluate.expression")
        paths = SplitPaths(Path(video.dataset_root), video.split)
        annotated = set(expression.gt_frames)
        truths, predictions = [], []
        for frame, mask in self.masks(expression, video):
            if frame in annotated:
                predictions.append(mask)
                truths.append(read_object_mask(str(paths.mask_path(video.video_id, frame)), expression.object_id))
        gt, pred = np.stack(truths).astype(bool), np.stack(predictions).astype(bool)
        result = evaluate_expression(gt, pred, bound_th=self.cfg.bound_th)
        return [
            {
                "expression_id": expression_id,
                "J": result["J"],
                "F": result["F"],
                "n_frames": len(truths),
                "intersection": int(np.count_nonzero(gt & pred)),
                "union": int(np.count_nonzero(gt | pred)),
            }
        ]

    def encode(self, expression_id: str) -> list[dict]:
        """One row per frame: the mask's path in the submission and its single-channel 0/255 PNG."""
        expression, video = self.replica.records(expression_id, "evaluate.expression")
        rows = []
        for frame, mask in self.masks(expression, video):
            encoded, png = cv2.imencode(".png", mask * np.uint8(255))
            assert encoded, "OpenCV encodes any uint8 (H, W) array as PNG"
            path = f"Annotations/{video.video_id}/{expression.exp_key}/{frame}.png"
            rows.append({"expression_id": expression_id, "path": path, "png": png.tobytes()})
        return rows
