"""Infer: the round's teacher (EMA of the student) labels every frame of every expression of the train split.

Per expression an actor propagates through the whole video and streams each frame's foreground probability
and per-pixel uncertainty (binary entropy) into the Zarr pseudo-label store, one chunk per frame and one
writer per expression, then commits the expression. A re-run skips committed expressions, so an interrupted
infer redoes at most the expressions that were in flight. The Parquet index (one row per frame) is written
last from the store's contents.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from prvos_core import faults, storage
from prvos_core.config import InferSection
from prvos_core.manifest import read_manifest
from prvos_core.predict import choose_device, load_predictor, predict_expression
from prvos_core.pseudo_store import (
    INDEX_FILE,
    PSEUDO_STORE,
    PseudoLabelWriter,
    committed_expressions,
    index_table,
    open_store,
    read_pseudo_label,
)
from prvos_core.text_cache import TextCache
from prvos_core.uncertainty import binary_entropy
from stages.model_pool import one_row_batch, run_pool
from stages.result import StageResult


@dataclass(frozen=True)
class InferInputs:
    manifest_dir: str
    text_cache: str
    text_identity: str
    checkpoint: str  # a checkpoint folder (prvos_core.model.save_checkpoint)
    split: str
    out_dir: str
    input_size: tuple[int, int]
    fingerprint: str = ""
    round_index: int | None = None


def run(inputs: InferInputs, cfg: InferSection) -> StageResult:
    started = time.perf_counter()
    store_uri = storage.join(inputs.out_dir, PSEUDO_STORE)
    store = open_store(store_uri)
    expressions = read_manifest(inputs.manifest_dir).split_expressions(inputs.split)
    done = committed_expressions(store)
    todo = [e.expression_id for e in expressions if e.expression_id not in done]
    frames_done = sum(
        1
        for _ in run_pool(
            TeacherActor,
            {"inputs": inputs, "cfg": cfg},
            todo,
            actors=cfg.actors,
            cpus_per_actor=cfg.cpus_per_actor,
            gpus_per_actor=cfg.gpus_per_actor,
            stage="infer",
            round_index=inputs.round_index,
        )
    )
    seconds = time.perf_counter() - started
    rows = _index_rows(store, [e.expression_id for e in expressions])
    index_uri = storage.join(inputs.out_dir, INDEX_FILE)
    storage.write_parquet(index_uri, index_table(rows))
    frames = len(rows["frame"])
    store_bytes = _bytes(store_uri)
    new_frames = sum(len(e.all_frames) for e in expressions if e.expression_id in set(todo))
    metrics = {
        "expressions": float(len(expressions)),
        "computed": float(frames_done),
        "skipped": float(len(expressions) - len(todo)),
        "frames": float(frames),
        "frames_per_second": new_frames / seconds if seconds > 0 else 0.0,
        "seconds": seconds,
        "store_bytes": float(store_bytes),
        "bytes_per_frame": store_bytes / frames if frames else 0.0,
    }
    return StageResult("infer", {"pseudo": store_uri, "index": index_uri}, metrics, inputs.fingerprint)


class TeacherActor:
    """One teacher replica: loads the checkpoint and the text cache once, labels one expression per call."""

    def __init__(self, inputs: InferInputs, cfg: InferSection) -> None:
        # One Ray CPU per actor: more torch threads than that oversubscribes the cores the other actors use.
        torch.set_num_threads(cfg.threads_per_actor)
        self.inputs, self.cfg = inputs, cfg
        self.device = choose_device(cfg.gpus_per_actor)
        self.model = load_predictor(inputs.checkpoint, cfg.teacher, self.device)
        self.text = TextCache(inputs.text_cache, inputs.text_identity).load_all()
        manifest = read_manifest(inputs.manifest_dir)
        self.expressions = {e.expression_id: e for e in manifest.split_expressions(inputs.split)}
        self.videos = {(v.split, v.video_id): v for v in manifest.videos}
        self.store = open_store(storage.join(inputs.out_dir, PSEUDO_STORE))
        self.calls = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        return one_row_batch(self.label, batch)

    def label(self, expression_id: str) -> dict:
        faults.maybe_fail("infer.expression", self.calls)
        self.calls += 1
        expression = self.expressions[expression_id]
        video = self.videos[(expression.split, expression.video_id)]
        words, word_mask = self.text.lookup([expression.text])
        writer = PseudoLabelWriter(
            self.store,
            expression_id,
            video.frame_ids,
            self.inputs.input_size,
            self.inputs.checkpoint,
            self.cfg.encoding,
        )
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
            writer.write(index, prob, binary_entropy(prob))
        writer.commit()
        return {"expression_id": expression_id, "frames": len(video.frame_ids)}


def _index_rows(store, expression_ids: list[str]) -> dict[str, list]:
    """One index row per frame, computed from what the store holds (so a resumed run indexes everything)."""
    rows: dict[str, list] = {
        k: [] for k in ("expression_id", "frame", "mean_entropy", "fg_fraction", "teacher", "status")
    }
    for expression_id in sorted(expression_ids):
        label = read_pseudo_label(store, expression_id)
        entropy = label.uncertainty.reshape(len(label.frame_ids), -1).mean(axis=1)
        foreground = (label.prob > 0.5).reshape(len(label.frame_ids), -1).mean(axis=1)
        for t, frame in enumerate(label.frame_ids):
            rows["expression_id"].append(expression_id)
            rows["frame"].append(frame)
            rows["mean_entropy"].append(float(entropy[t]))
            rows["fg_fraction"].append(float(foreground[t]))
            rows["teacher"].append(label.teacher)
            rows["status"].append("committed")
    return rows


def _bytes(uri: str) -> int:
    fs, path = storage.filesystem(uri)
    return int(sum(fs.du(path, total=False).values())) if fs.exists(path) else 0
