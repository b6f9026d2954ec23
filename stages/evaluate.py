"""Evaluate: a round's student on a split, by referring segmentation from the text alone.

With ground truth: per-expression J, F, J&F (DAVIS-2017 definitions, at the original frame size) in a Parquet
table, and the overall J, F, J&F, P@0.5..0.9 and overall IoU; with Ref-DAVIS17 annotator tags, also per
annotator and their mean. Without ground truth (Ref-YouTube-VOS valid): the submission zip,
`Annotations/<video>/<expression key>/<frame>.png`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from prvos_core import faults, storage
from prvos_core.config import EvaluateSection
from prvos_core.frames import read_object_mask
from prvos_core.layout import SplitPaths
from prvos_core.manifest import read_manifest
from prvos_core.metrics import evaluate_expression, summarize
from prvos_core.predict import choose_device, load_predictor, predict_expression, upsample_prob
from prvos_core.text_cache import TextCache
from stages.model_pool import one_row_batch, run_pool
from stages.result import StageResult

PER_EXPRESSION_FILE = "per_expression.parquet"
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
        ("n_frames", pa.int32()),
    ]
)


@dataclass(frozen=True)
class EvaluateInputs:
    manifest_dir: str
    text_cache: str
    text_identity: str
    checkpoint: str
    split: str
    out_dir: str
    input_size: tuple[int, int]
    fingerprint: str = ""
    round_index: int | None = None


def run(inputs: EvaluateInputs, cfg: EvaluateSection) -> StageResult:
    started = time.perf_counter()
    expressions = read_manifest(inputs.manifest_dir).split_expressions(inputs.split)
    with_gt = any(e.gt_frames for e in expressions)
    staging = None if with_gt else tempfile.mkdtemp(prefix=".submission-", dir=_local_dir(inputs.out_dir))
    ids = [e.expression_id for e in expressions if e.gt_frames or not with_gt]
    rows = list(
        run_pool(
            StudentActor,
            {"inputs": inputs, "cfg": cfg, "submission_dir": staging},
            ids,
            actors=cfg.actors,
            cpus_per_actor=cfg.cpus_per_actor,
            gpus_per_actor=cfg.gpus_per_actor,
            stage="evaluate",
            round_index=inputs.round_index,
        )
    )
    rows.sort(key=lambda row: row["expression_id"])
    if not with_gt:
        return _submission(inputs, staging, rows, started)
    by_id = {e.expression_id: e for e in expressions}
    table = pa.table(
        {
            "expression_id": [r["expression_id"] for r in rows],
            "video_id": [by_id[r["expression_id"]].video_id for r in rows],
            "exp_key": [by_id[r["expression_id"]].exp_key for r in rows],
            "object_id": [by_id[r["expression_id"]].object_id for r in rows],
            "annotator": [by_id[r["expression_id"]].annotator for r in rows],
            "kind": [by_id[r["expression_id"]].kind for r in rows],
            "J": [r["J"] for r in rows],
            "F": [r["F"] for r in rows],
            "JF": [(r["J"] + r["F"]) / 2 for r in rows],
            "n_frames": [r["n_frames"] for r in rows],
        },
        schema=PER_EXPRESSION_SCHEMA,
    )
    table_uri = storage.join(inputs.out_dir, PER_EXPRESSION_FILE)
    storage.write_parquet(table_uri, table)
    metrics = overall_metrics(rows, [by_id[r["expression_id"]].annotator for r in rows])
    metrics.update({"expressions": float(len(rows)), "seconds": time.perf_counter() - started})
    metrics_uri = storage.join(inputs.out_dir, "metrics.json")
    storage.write_json(metrics_uri, metrics)
    return StageResult("evaluate", {"per_expression": table_uri, "metrics": metrics_uri}, metrics, inputs.fingerprint)


def overall_metrics(rows: list[dict], annotators: list[int | None]) -> dict[str, float]:
    """J, F, JF, P0.5..P0.9 and overall IoU over expressions; per annotator and their mean when tagged."""
    table = summarize([r["J"] for r in rows], [r["F"] for r in rows])
    metrics = {_safe(key): float(value) for key, value in table.items()}
    union = sum(r["union"] for r in rows)
    metrics["overall_iou"] = sum(r["intersection"] for r in rows) / union if union else 1.0
    tagged = sorted({a for a in annotators if a is not None})
    if tagged:
        for annotator in tagged:
            own = [r for r, a in zip(rows, annotators, strict=True) if a == annotator]
            part = summarize([r["J"] for r in own], [r["F"] for r in own])
            for key in ("J", "F", "J&F"):
                metrics[f"{_safe(key)}_annotator{annotator}"] = float(part[key])
        metrics["JF_annotator_mean"] = float(np.mean([metrics[f"JF_annotator{a}"] for a in tagged]))
    return metrics


def _safe(key: str) -> str:
    return key.replace("J&F", "JF").replace("P@", "P")


class StudentActor:
    """One student replica: predicts every frame of an expression from its text, then scores or saves it."""

    def __init__(self, inputs: EvaluateInputs, cfg: EvaluateSection, submission_dir: str | None) -> None:
        torch.set_num_threads(cfg.threads_per_actor)
        self.inputs, self.cfg, self.submission_dir = inputs, cfg, submission_dir
        self.device = choose_device(cfg.gpus_per_actor)
        self.model = load_predictor(inputs.checkpoint, "student", self.device)
        self.text = TextCache(inputs.text_cache, inputs.text_identity).load_all()
        manifest = read_manifest(inputs.manifest_dir)
        self.expressions = {e.expression_id: e for e in manifest.split_expressions(inputs.split)}
        self.videos = {(v.split, v.video_id): v for v in manifest.videos}
        self.calls = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        return one_row_batch(self.score, batch)

    def score(self, expression_id: str) -> dict:
        faults.maybe_fail("evaluate.expression", self.calls)
        self.calls += 1
        expression = self.expressions[expression_id]
        video = self.videos[(expression.split, expression.video_id)]
        paths = SplitPaths(Path(video.dataset_root), video.split)
        words, word_mask = self.text.lookup([expression.text])
        gt_frames = set(expression.gt_frames)
        predictions, truths = [], []
        for index, prob in predict_expression(
            self.model,
            video,
            expression,
            words[0],
            word_mask[0],
            self.inputs.input_size,
            first_mask_from_gt=self.cfg.first_frame_gt,
            memory_frames=self.cfg.memory_frames,
        ):
            frame = video.frame_ids[index]
            mask = (upsample_prob(prob, (video.height, video.width)) > 0.5).astype(np.uint8)
            if self.submission_dir is not None:
                folder = Path(self.submission_dir) / "Annotations" / video.video_id / expression.exp_key
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask * 255).save(folder / f"{frame}.png")
            elif frame in gt_frames:
                predictions.append(mask)
                truths.append(read_object_mask(str(paths.mask_path(video.video_id, frame)), expression.object_id))
        if self.submission_dir is not None:
            return {"expression_id": expression_id, "J": 0.0, "F": 0.0, "n_frames": len(video.frame_ids),
                    "intersection": 0, "union": 0}  # fmt: skip
        gt, pred = np.stack(truths), np.stack(predictions)
        result = evaluate_expression(gt, pred, bound_th=self.cfg.bound_th)
        return {
            "expression_id": expression_id,
            "J": float(result["J"]),
            "F": float(result["F"]),
            "n_frames": len(truths),
            "intersection": int(np.logical_and(gt, pred).sum()),
            "union": int(np.logical_or(gt, pred).sum()),
        }


def _local_dir(uri: str) -> str:
    if storage.is_local(uri):
        os.makedirs(uri, exist_ok=True)
        return uri
    return tempfile.gettempdir()


def _submission(inputs: EvaluateInputs, staging: str, rows: list[dict], started: float) -> StageResult:
    """Zip the staged PNGs into the Ref-YouTube-VOS submission layout; the zip appears whole or not at all."""
    with tempfile.TemporaryDirectory() as folder:
        archive = Path(folder) / "submission.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
            for path in sorted(Path(staging).rglob("*.png")):
                bundle.write(path, path.relative_to(staging).as_posix())
        uri = storage.join(inputs.out_dir, "submission.zip")
        storage.write_bytes(uri, archive.read_bytes())
    shutil.rmtree(staging, ignore_errors=True)
    metrics = {
        "expressions": float(len(rows)),
        "frames": float(sum(r["n_frames"] for r in rows)),
        "seconds": time.perf_counter() - started,
    }
    return StageResult("evaluate", {"submission": uri}, metrics, inputs.fingerprint)
