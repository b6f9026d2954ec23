"""Tests of prvos_core.pseudo.store: the uint8 codec, the teacher's and the refined Zarr layouts (commit marker,
frame order, frame subsets), the infer index summaries and the refine stage's frame decisions."""

from __future__ import annotations

import numpy as np
import pytest

from prvos_core import storage
from prvos_core.errors import StorageError
from prvos_core.pseudo.store import (
    FRAMES_SCHEMA,
    INDEX_SCHEMA,
    FrameDecision,
    PseudoLabelWriter,
    RefinedLabel,
    committed_expressions,
    dequantize_unit,
    frame_decision_rows,
    index_row,
    open_store,
    quantize_unit,
    read_frame_decisions,
    read_index,
    read_pseudo_label,
    read_refined,
    stored_index_rows,
    summarize_frame,
    write_frame_decisions,
    write_index,
    write_refined,
)

SIZE = (6, 5)
FRAMES = ("00000", "00005", "00010", "00015")


def _teacher(seed: int, frames: int = len(FRAMES)) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W) float32 foreground probability and uncertainty in [0, 1], ends included."""
    rng = np.random.default_rng(seed)
    prob = rng.random((frames, *SIZE), dtype=np.float32)
    prob[0, 0, :2] = (0.0, 1.0)
    return prob, rng.random((frames, *SIZE), dtype=np.float32)


def _write(store, expression_id: str, prob, uncertainty, encoding="uint8", order=None, commit=True) -> list:
    writer = PseudoLabelWriter(store, expression_id, FRAMES, SIZE, "teacher-a", encoding)
    order = range(len(prob)) if order is None else order
    summaries = {t: writer.write(t, prob[t], uncertainty[t]) for t in order}
    if commit:
        writer.commit()
    return [summaries[t] for t in sorted(summaries)]


def test_quantisation_round_trip_error_is_at_most_half_a_step():
    x = np.linspace(0.0, 1.0, 100_001, dtype=np.float32)
    codes = quantize_unit(x)
    assert codes.dtype == np.uint8
    error = np.abs(dequantize_unit(codes) - x)
    assert error.max() <= 1 / 510 + 1e-7
    assert error.max() > 1 / 510 - 1e-4  # the bound is tight, not loose


def test_quantisation_clips_to_the_unit_range_and_every_code_round_trips():
    np.testing.assert_array_equal(
        quantize_unit(np.array([0.0, 1.0, 0.2, -0.01, 1.01, -7, 3])), [0, 255, 51, 0, 255, 0, 255]
    )
    codes = np.arange(256, dtype=np.uint8)
    decoded = dequantize_unit(codes)
    assert decoded.dtype == np.float32 and decoded[0] == 0.0 and decoded[-1] == 1.0
    np.testing.assert_array_equal(quantize_unit(decoded), codes)


def test_quantisation_rejects_nan_and_non_uint8_codes():
    with pytest.raises(ValueError, match="NaN"):
        quantize_unit(np.array([0.5, np.nan]))
    with pytest.raises(ValueError, match="uint8"):
        dequantize_unit(np.array([1, 2], dtype=np.int32))


@pytest.mark.parametrize("encoding, dtype, tolerance", [("uint8", np.uint8, 1 / 510), ("float16", np.float16, 2**-11)])
def test_pseudo_labels_round_trip(tmp_path, encoding, dtype, tolerance):
    store = open_store(str(tmp_path / "pseudo.zarr"))
    prob, uncertainty = _teacher(1)
    _write(store, "e1", prob, uncertainty, encoding)
    reopened = open_store(str(tmp_path / "pseudo.zarr"), mode="r")
    label = read_pseudo_label(reopened, "e1")
    assert (label.expression_id, label.frame_ids, label.teacher) == ("e1", FRAMES, "teacher-a")
    assert reopened["e1"]["prob"].dtype == reopened["e1"]["uncertainty"].dtype == dtype
    assert label.prob.dtype == label.uncertainty.dtype == np.float32
    assert label.prob.shape == label.uncertainty.shape == (len(FRAMES), *SIZE)
    assert np.abs(label.prob - prob).max() <= tolerance + 1e-7
    assert np.abs(label.uncertainty - uncertainty).max() <= tolerance + 1e-7
    assert label.prob[0, 0, 0] == 0.0 and label.prob[0, 0, 1] == 1.0


def test_an_uncommitted_expression_is_not_listed_and_cannot_be_read(tmp_path):
    store = open_store(str(tmp_path / "pseudo.zarr"))
    prob, uncertainty = _teacher(2)
    _write(store, "done", prob, uncertainty)
    _write(store, "stopped", prob, uncertainty, order=[0, 1], commit=False)
    assert committed_expressions(store) == {"done"}
    with pytest.raises(StorageError, match="stopped .*not committed"):
        read_pseudo_label(store, "stopped")
    with pytest.raises(StorageError, match="absent is not in the store"):
        read_pseudo_label(store, "absent")
    with pytest.raises(StorageError, match="no Zarr store here"):
        open_store(str(tmp_path / "nothing.zarr"), mode="r")


def test_frames_written_out_of_order_land_in_their_rows(tmp_path):
    prob, uncertainty = _teacher(3)
    in_order = open_store(str(tmp_path / "in_order.zarr"))
    shuffled = open_store(str(tmp_path / "shuffled.zarr"))
    first = _write(in_order, "e1", prob, uncertainty)
    second = _write(shuffled, "e1", prob, uncertainty, order=[2, 0, 3, 1])
    assert first == second
    for name in ("prob", "uncertainty"):
        np.testing.assert_array_equal(shuffled["e1"][name][:], in_order["e1"][name][:])
    np.testing.assert_array_equal(read_pseudo_label(shuffled, "e1").prob[2], dequantize_unit(quantize_unit(prob[2])))


def test_the_index_rebuilt_from_the_store_equals_what_the_writer_returned(tmp_path):
    store = open_store(str(tmp_path / "pseudo.zarr"))
    prob, uncertainty = _teacher(4)
    summaries = _write(store, "e1", prob, uncertainty)
    label = read_pseudo_label(store, "e1")
    assert [summarize_frame(label.prob[t], label.uncertainty[t]) for t in range(len(FRAMES))] == summaries
    written = [index_row("e1", frame, summary, "teacher-a") for frame, summary in zip(FRAMES, summaries, strict=True)]
    assert stored_index_rows(label) == written
    t = 1
    assert summaries[t].mean_entropy == pytest.approx(float(label.uncertainty[t].mean(dtype=np.float64)))
    assert summaries[t].fg_fraction == pytest.approx(float((label.prob[t] > 0.5).mean()))
    write_index(str(tmp_path / "index.parquet"), list(reversed(written)))
    table = read_index(str(tmp_path / "index.parquet"))
    assert table.schema.equals(INDEX_SCHEMA) and table.column("frame").to_pylist() == list(FRAMES)
    assert set(table.column("status").to_pylist()) == {"committed"}


def test_refined_labels_round_trip_whole_and_by_frame(tmp_path):
    rng = np.random.default_rng(5)
    label = rng.choice(np.array([0, 1, 255], np.uint8), size=(len(FRAMES), *SIZE))
    weight = rng.random((len(FRAMES), *SIZE), dtype=np.float32)
    refined = RefinedLabel("e1", FRAMES, label, weight, pseudo_frames=("00005", "00015"), gt_frames=("00000",))
    write_refined(open_store(str(tmp_path / "refined.zarr")), refined)
    store = open_store(str(tmp_path / "refined.zarr"), mode="r")
    assert committed_expressions(store) == {"e1"}
    whole = read_refined(store, "e1")
    assert (whole.expression_id, whole.frame_ids) == ("e1", FRAMES)
    assert (whole.pseudo_frames, whole.gt_frames) == (("00005", "00015"), ("00000",))
    np.testing.assert_array_equal(whole.label, label)
    assert whole.weight.dtype == np.float32 and np.abs(whole.weight - weight).max() <= 1 / 510 + 1e-7
    subset = read_refined(store, "e1", frames=["00015", "00005"])
    assert subset.frame_ids == ("00015", "00005") and subset.pseudo_frames == whole.pseudo_frames
    np.testing.assert_array_equal(subset.label, label[[3, 1]])
    np.testing.assert_array_equal(subset.weight, whole.weight[[3, 1]])
    with pytest.raises(StorageError, match="other is not in the store"):
        read_refined(store, "other")


def test_frame_decisions_round_trip_through_the_frames_table(tmp_path):
    decisions = [
        FrameDecision(0, "ground_truth", True, None, 0.0, 1.0, "ground_truth"),
        FrameDecision(1, "pseudo_label", True, 1, 0.031, 0.875, "rank 1 of 3 by mean entropy 0.031"),
        FrameDecision(2, "pseudo_label", False, 3, 0.21, 0.4, "rank 3 of 3 by mean entropy 0.210; top 2 already kept"),
        FrameDecision(3, "pseudo_label", True, 2, 0.1, 0.6, "rank 2 of 3 by mean entropy 0.100"),
    ]
    assert [d.decision for d in decisions] == ["ground_truth", "kept", "rejected", "kept"]
    other = [FrameDecision(0, "pseudo_label", False, 1, 0.5, 0.0, "rank 1 of 1 by mean entropy 0.500")]
    # Rows of two expressions, each in another order than its frames.
    rows = frame_decision_rows("e2", ("a",), other) + frame_decision_rows("e1", FRAMES, decisions[::-1])
    assert [row["frame"] for row in rows] == ["a", *FRAMES[::-1]]
    write_frame_decisions(str(tmp_path / "frames.parquet"), rows)
    table = storage.read_parquet(str(tmp_path / "frames.parquet"))
    assert table.schema.equals(FRAMES_SCHEMA)
    read = read_frame_decisions(table, "e1", FRAMES)
    assert len(read) == len(decisions)
    for got, want in zip(read, decisions, strict=True):
        assert (got.frame_index, got.source, got.kept, got.rank, got.reason) == (
            want.frame_index, want.source, want.kept, want.rank, want.reason
        )  # fmt: skip
        # float32 columns: equal to the float64 decision within float32 rounding.
        assert got.mean_entropy == pytest.approx(want.mean_entropy, rel=1e-6, abs=1e-9)
        assert got.kept_ratio == pytest.approx(want.kept_ratio, rel=1e-6)
    assert read[0].rank is None
    assert read_frame_decisions(table, "e2", ("a",))[0].decision == "rejected"
