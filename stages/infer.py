"""Infer: the round's teacher (EMA of the student) labels every frame of every expression of the train split.

Per expression an actor of the pool (stages._ray; the expressions of a video together, sharing its decoded and
backbone-encoded frames, with `share_frames`) propagates through the whole video (from every ground-truth
frame of the expression, both ways, with `anchors: all`; optionally averaged with the mirrored video, with
`uncertainty: flip`) and streams each frame's foreground probability and per-pixel uncertainty (binary entropy)
into the Zarr pseudo-label store, one chunk per frame and one writer per expression, then commits the expression
and returns one index row per frame.

Resume: committed expressions are skipped (their index rows are rebuilt from the store) and an uncommitted one
is rewritten from scratch, so an interrupted infer redoes at most the expressions that were in flight, and a
re-run of a finished one does no model work. The store records a digest of what the labels depend on
(teacher weights, settings, manifest); a store left by other inputs is started afresh, never mixed in.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

from prvos_core import storage
from prvos_core.config import InferSection
from prvos_core.data.manifest import Expression, Video
from prvos_core.inference.matching import Matching
from prvos_core.inference.predict import VideoFrames, check_prediction_inputs, predictor_identity
from prvos_core.pseudo.store import (
    INDEX_FILE,
    PSEUDO_STORE,
    PseudoLabelWriter,
    committed_expressions,
    index_row,
    open_store,
    read_pseudo_label,
    stored_index_rows,
    write_index,
)
from prvos_core.pseudo.uncertainty import binary_entropy
from stages._ray import ModelInputs, PredictorActor, run_pool, work_units, write_placement
from stages.result import StageResult, output

InferInputs = ModelInputs  # the same fields as the other model stage; named for readers of this stage


@dataclass(frozen=True, kw_only=True)
class InferResult(StageResult):
    stage: ClassVar[str] = "infer"
    pseudo: str = output()  # the pseudo-label store, <dir>/pseudo.zarr
    index: str = output()  # one row per frame (prvos_core.pseudo.store.INDEX_SCHEMA)
    placement: str = output()
    expressions: int
    computed: int  # expressions labelled by this run
    skipped: int  # expressions committed by an earlier, interrupted run
    frames: int
    frames_per_second: float  # of the pool, over the computed frames (0 when nothing was computed)
    seconds: float
    store_bytes: int
    bytes_per_frame: float
    nodes: int


def run(inputs: InferInputs, cfg: InferSection) -> InferResult:
    started = time.perf_counter()
    manifest, expressions = check_prediction_inputs(
        inputs.manifest_dir, inputs.split, inputs.checkpoint, inputs.text_cache, inputs.text_identity
    )
    videos = {e.expression_id: manifest.video_of(e) for e in expressions}
    teacher = predictor_identity(inputs.checkpoint, cfg.teacher)

    store_uri = storage.join(inputs.out_dir, PSEUDO_STORE)
    digest = _inputs_digest(inputs, cfg, teacher, expressions, videos)
    store = storage.store_for_inputs(store_uri, digest, open_store, "infer: labels")
    done = committed_expressions(store) & set(videos)
    todo = [e for e in expressions if e.expression_id not in done]
    pool_started, placement = time.perf_counter(), Counter()
    pool = run_pool(
        TeacherActor, (inputs, cfg, teacher), work_units(todo, cfg.share_frames), cfg, label="infer",
        round_index=inputs.round_index, placement=placement,
    )  # fmt: skip
    rows = [row for expression_rows in pool for row in expression_rows]
    pool_seconds = time.perf_counter() - pool_started
    for expression_id in sorted(done):
        rows += stored_index_rows(read_pseudo_label(store, expression_id))
    index_uri = storage.join(inputs.out_dir, INDEX_FILE)
    write_index(index_uri, rows)

    computed_frames = sum(videos[e.expression_id].n_frames for e in todo)
    store_bytes = storage.disk_bytes(store_uri)
    return InferResult(
        pseudo=store_uri,
        index=index_uri,
        placement=write_placement(inputs.out_dir, placement, "expressions"),
        expressions=len(expressions),
        computed=len(todo),
        skipped=len(done),
        frames=len(rows),
        frames_per_second=computed_frames / pool_seconds if computed_frames else 0.0,
        seconds=time.perf_counter() - started,
        store_bytes=store_bytes,
        bytes_per_frame=store_bytes / len(rows),
        nodes=len(placement),
    )


class TeacherActor(PredictorActor):
    """One teacher replica: labels one expression per call, streaming its frames into the store."""

    fault_point = "infer.expression"

    def __init__(self, inputs: InferInputs, cfg: InferSection, teacher: str) -> None:
        super().__init__(inputs, cfg, cfg.teacher)
        self.teacher = teacher
        self.store = open_store(storage.join(inputs.out_dir, PSEUDO_STORE))
        self.matching = Matching(cfg.match_weight, cfg.match_temperature, cfg.match_top_k)

    def handle(self, expression: Expression, video: Video, frames: VideoFrames) -> list[dict]:
        """Write every frame of one expression, commit it, and return its index rows (one per frame)."""
        size, expression_id = self.inputs.input_size, expression.expression_id
        # A new writer replaces whatever an interrupted run left of this expression.
        writer = PseudoLabelWriter(self.store, expression_id, video.frame_ids, size, self.teacher, self.cfg.encoding)
        rows = []
        predictions = self.predictor.predict(
            expression, video, size, first_mask_from_gt=self.cfg.first_frame_gt, anchors=self.cfg.anchors,
            flip=self.cfg.uncertainty == "flip", frames=frames, matching=self.matching,
        )  # fmt: skip
        # With flip, prob is the mean m of the two passes and H(m) their mean entropy plus their disagreement; it
        # bounds |p - p_flip| (<= 2 min(m, 1 - m) <= H(m)), so a max with the disagreement would add nothing.
        for index, prob in predictions:
            summary = writer.write(index, prob, binary_entropy(prob))
            rows.append(index_row(expression_id, video.frame_ids[index], summary, self.teacher))
        writer.commit()
        return rows


def _inputs_digest(
    inputs: InferInputs, cfg: InferSection, teacher: str, expressions: list[Expression], videos: dict[str, Video]
) -> str:
    """Digest of everything the stored labels depend on; pool sizes and threads are left out, so a resume
    may use other resources."""
    records = []
    for expression in expressions:
        video = videos[expression.expression_id]
        # labelled: an unlabelled video's masks are never read by the teacher.
        records.append(
            [expression.expression_id, expression.text, expression.object_id, list(expression.gt_frames),
             list(video.frame_ids), video.labelled]
        )  # fmt: skip
    content = {
        "teacher": teacher,
        "input_size": list(inputs.input_size),
        "text_identity": inputs.text_identity,
        "encoding": cfg.encoding,
        "memory_frames": cfg.memory_frames,
        "first_frame_gt": cfg.first_frame_gt,
        "anchors": cfg.anchors,
        "uncertainty": cfg.uncertainty,
        "matching": [cfg.match_weight, cfg.match_temperature, cfg.match_top_k],
        "expressions": sorted(records),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
