"""Tests of stages.result: every stage result writes the commit marker's outputs and metrics as markers always had
them, and reads itself back typed (ints as int, URIs as str), from markers written before results were typed too."""

from __future__ import annotations

import pytest

from prvos_core.errors import StorageError
from stages.evaluate import EvaluateResult
from stages.infer import InferResult
from stages.ingest import IngestResult
from stages.refine import RefineResult
from stages.text import TextResult
from stages.train import TrainResult

# Commit markers as the stages wrote them before their results were typed: (outputs, metrics).
MARKERS = {
    IngestResult: (
        {"videos": "/r/ingest/videos.parquet", "expressions": "/r/ingest/expressions.parquet",
         "quarantine": "/r/ingest/quarantine.parquet"},
        {"videos": 2.0, "expressions": 4.0, "quarantined": 1.0, "frames": 16.0, "files_checked": 24.0,
         "frames_per_second": 80.5, "seconds": 0.4, "check_seconds": 0.2, "splits": 2.0, "unlabelled_videos": 3.0,
         "hidden_frames": 12.0, "reviewed_frames": 4.0},
    ),
    TextResult: (
        {"cache": "/r/text/cache.zarr", "identity": "minilm-l6-abc", "dim": "384"},
        {"texts": 4.0, "encoded": 4.0, "seconds": 1.5},
    ),
    TrainResult: (
        {"checkpoint": "/r/r0-train/checkpoint", "history": "/r/r0-train/history.json",
         "placement": "/r/r0-train/placement.json"},
        {"epoch": 1.0, "step": 8.0, "loss": 0.52, "clips_per_second": 3.1, "epoch_seconds": 2.6, "start_epoch": 0.0,
         "loss_first_epoch": 0.71, "nodes": 1.0, "seconds": 9.0},
    ),
    InferResult: (
        {"pseudo": "/r/r0-infer/pseudo.zarr", "index": "/r/r0-infer/index.parquet",
         "placement": "/r/r0-infer/placement.json"},
        {"expressions": 4.0, "computed": 3.0, "skipped": 1.0, "frames": 32.0, "frames_per_second": 40.0,
         "seconds": 2.0, "store_bytes": 12345.0, "bytes_per_frame": 385.78125, "nodes": 1.0},
    ),
    RefineResult: (
        {"refined": "/r/r0-refine/refined.zarr", "frames": "/r/r0-refine/frames.parquet",
         "summary": "/r/r0-refine/summary.json"},
        {"threshold_fg": 0.8, "threshold_bg": 0.9, "expressions": 4.0, "frames": 32.0, "kept_ratio": 0.7,
         "pixels_scored_full": 0.0, "seconds": 0.3},
    ),
    EvaluateResult: (
        {"per_expression": "/r/r0-evaluate/per_expression.parquet", "metrics": "/r/r0-evaluate/metrics.json",
         "placement": "/r/r0-evaluate/placement.json"},
        {"J": 0.5, "F": 0.6, "JF": 0.55, "P0.5": 0.5, "overall_iou": 0.45, "J_annotator1": 0.4,
         "expressions": 2.0, "unscored": 0.0, "frames": 4.0, "seconds": 1.0, "nodes": 1.0},
    ),
}  # fmt: skip


@pytest.mark.parametrize("result_type", list(MARKERS), ids=lambda kind: kind.stage)
def test_a_marker_reads_back_typed_and_writes_the_same(result_type):
    outputs, metrics = MARKERS[result_type]
    result = result_type.from_marker(outputs, metrics)
    assert result.to_marker() == (outputs, metrics)
    assert result.metrics == metrics
    assert result_type.from_marker(*result.to_marker()) == result


def test_fields_are_typed():
    text = TextResult.from_marker(*MARKERS[TextResult])
    assert text.dim == 384 and isinstance(text.dim, int) and text.cache == "/r/text/cache.zarr"
    infer = InferResult.from_marker(*MARKERS[InferResult])
    assert (infer.frames, infer.store_bytes) == (32, 12345) and isinstance(infer.frames, int)
    assert isinstance(infer.frames_per_second, float)
    ingest = IngestResult.from_marker(*MARKERS[IngestResult])
    assert ingest.videos == 2 and ingest.videos_table.endswith("videos.parquet")
    assert ingest.manifest_dir == "/r/ingest"
    # A marker from before label regimes and unlabelled videos reads back with zeros for them.
    outputs, metrics = MARKERS[IngestResult]
    old = {key: value for key, value in metrics.items() if key not in ("unlabelled_videos", "hidden_frames")}
    earlier = IngestResult.from_marker(outputs, old)
    assert (earlier.unlabelled_videos, earlier.hidden_frames, earlier.videos) == (0, 0, 2)
    # The metrics no field names are the refine report and the evaluate scores.
    refine = RefineResult.from_marker(*MARKERS[RefineResult])
    assert refine.frames == "/r/r0-refine/frames.parquet" and refine.report["frames"] == 32.0
    assert "seconds" not in refine.report
    evaluate = EvaluateResult.from_marker(*MARKERS[EvaluateResult])
    assert evaluate.scores == {"J": 0.5, "F": 0.6, "JF": 0.55, "P0.5": 0.5, "overall_iou": 0.45, "J_annotator1": 0.4}
    assert evaluate.metrics_file.endswith("metrics.json") and evaluate.submission is None


def test_what_a_stage_did_not_measure_stays_out_of_the_marker():
    submission = EvaluateResult(submission="/r/r0-evaluate/submission.zip", expressions=2, frames=20, seconds=1.0)
    outputs, metrics = submission.to_marker()
    assert outputs == {"submission": "/r/r0-evaluate/submission.zip"}
    assert metrics == {"expressions": 2.0, "frames": 20.0, "seconds": 1.0}
    assert EvaluateResult.from_marker(outputs, metrics) == submission
    train = TrainResult.from_marker(*MARKERS[TrainResult])
    assert "loss_first_epoch" not in TrainResult(**{**train.__dict__, "loss_first_epoch": None}).metrics


def test_a_marker_without_a_required_value_is_a_storage_error():
    outputs, metrics = MARKERS[TextResult]
    with pytest.raises(StorageError, match="commit marker of a text stage lacks dim, texts"):
        TextResult.from_marker({k: v for k, v in outputs.items() if k != "dim"}, {"encoded": 1.0, "seconds": 1.0})
