"""Zarr layouts of the teacher's pseudo-labels (infer output) and of the refined labels (refine output).

```
<infer stage>/pseudo.zarr  attrs: inputs (digest of what the labels depend on, set by the infer stage)
<infer stage>/pseudo.zarr/<expression_id>/prob          (T, H, W) uint8 (p * 255, rounded) or float16
<infer stage>/pseudo.zarr/<expression_id>/uncertainty   (T, H, W) same dtype: normalised binary entropy
<infer stage>/pseudo.zarr/<expression_id>  attrs: frame_ids, teacher, encoding, committed
<refine stage>/refined.zarr/<expression_id>/label       (T, H, W) uint8: 0 background, 1 object, 255 ignore
<refine stage>/refined.zarr/<expression_id>/weight      (T, H, W) uint8 (w * 255, rounded)
<refine stage>/refined.zarr/<expression_id>  attrs: frame_ids, pseudo_frames, gt_frames, committed
```
The teacher's arrays hold up to CHUNK_FRAMES frames per chunk (refine reads an expression whole; per-chunk
costs in Zarr, not compression, bound the writer); the refined arrays hold one frame per chunk, since training
reads a few frames of an expression at a time. One writer per expression (Zarr loses data when two writers
share a chunk). An expression counts only once its `committed` attribute is set, after all of its chunks are
written, so an interrupted writer leaves nothing that a reader takes as done. Beside the store, the infer stage's Parquet
index (`INDEX_SCHEMA`) has one row per committed frame: mean entropy, foreground fraction, teacher, status.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import zarr
from zarr.codecs import ZstdCodec

from prvos_core import storage
from prvos_core.errors import StorageError
from prvos_core.labels import predicted_foreground

Encoding = Literal["uint8", "float16"]
PSEUDO_STORE = "pseudo.zarr"
REFINED_STORE = "refined.zarr"
INDEX_FILE = "index.parquet"  # infer: one row per (expression, frame)
FRAMES_FILE = "frames.parquet"  # refine: one decision per (expression, frame)
_COMPRESSORS = ZstdCodec(level=3)


def quantize_unit(x: np.ndarray) -> np.ndarray:
    """Quantise values in [0, 1] to uint8 as round(x * 255); the round trip error is at most 1/510.

    Values are clipped to [0, 1] first. NaN raises ValueError: it means the teacher produced non-finite
    output, which must not be stored as a plausible label.
    """
    x = np.asarray(x, dtype=np.float32)
    if np.isnan(x).any():
        raise ValueError("cannot quantise NaN values; the prediction or uncertainty map is not finite")
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def dequantize_unit(q: np.ndarray) -> np.ndarray:
    """Inverse of `quantize_unit`: uint8 -> float32 in [0, 1] (q / 255)."""
    q = np.asarray(q)
    if q.dtype != np.uint8:
        raise ValueError(f"dequantize_unit expects uint8 codes, got {q.dtype}")
    return q.astype(np.float32) / np.float32(255.0)


def open_store(uri: str, mode: Literal["r", "a"] = "a", storage_options: dict | None = None) -> zarr.Group:
    """Open (or create, mode 'a') a Zarr v3 group at a local path or fsspec URL."""
    try:
        return zarr.open_group(uri, mode=mode, zarr_format=3, storage_options=storage_options)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise StorageError(f"{uri}: no Zarr store here; run the stage that writes it first") from None


def _encode(values: np.ndarray, encoding: Encoding) -> np.ndarray:
    return quantize_unit(values) if encoding == "uint8" else values.astype(np.float16)


def _decode(values: np.ndarray) -> np.ndarray:
    return dequantize_unit(values) if values.dtype == np.uint8 else values.astype(np.float32)


@dataclass(frozen=True)
class FrameSummary:
    """What the infer index says about one stored frame."""

    mean_entropy: float  # mean normalised binary entropy over the frame's pixels
    fg_fraction: float  # share of pixels with foreground probability > 0.5


def summarize_frame(prob: np.ndarray, uncertainty: np.ndarray) -> FrameSummary:
    """Summary of one decoded frame, prob and uncertainty (H, W) float32.

    Writer and re-reader both call this on the stored (decoded) values, so an index rebuilt from the store
    after a resume equals the one written during an uninterrupted run.
    """
    return FrameSummary(
        float(np.mean(uncertainty, dtype=np.float64)), float(np.mean(predicted_foreground(prob), dtype=np.float64))
    )


@dataclass(frozen=True)
class PseudoLabel:
    """One expression's teacher output, decoded to float32 in [0, 1]."""

    expression_id: str
    frame_ids: tuple[str, ...]
    prob: np.ndarray  # (T, H, W) foreground probability
    uncertainty: np.ndarray  # (T, H, W) normalised binary entropy
    teacher: str


# Frames per chunk of the teacher's arrays. Zarr spends ~1 ms per chunk and per call on its I/O thread, more than
# compressing a 128x128 frame; 16-frame chunks written in one call per array cut the writer from 3.7 to
# ~0.7 ms per frame (benchmarks/results/performance.md, P2/P3) and compress better (neighbouring frames agree).
CHUNK_FRAMES = 16


class PseudoLabelWriter:
    """Collects one expression's frames as they are predicted and writes them at `commit`, one call per array.

    An expression is the unit of resume (committed or redone whole), so holding its frames until the end loses
    nothing; the encoded frames of a 180-frame expression at 320x320 take 37 MB.
    """

    def __init__(self, store: zarr.Group, expression_id: str, frame_ids: Iterable[str], size: tuple[int, int],
                 teacher: str, encoding: Encoding = "uint8") -> None:  # fmt: skip
        self.frame_ids = tuple(frame_ids)
        self.group = store.require_group(expression_id)
        self.group.attrs.update({"committed": False})
        dtype = "uint8" if encoding == "uint8" else "float16"
        shape, chunks = (len(self.frame_ids), *size), (max(1, min(CHUNK_FRAMES, len(self.frame_ids))), *size)
        self.arrays = {
            name: self.group.create_array(
                name, shape=shape, chunks=chunks, dtype=dtype, compressors=_COMPRESSORS, overwrite=True
            )
            for name in ("prob", "uncertainty")
        }
        self.encoding, self.teacher = encoding, teacher
        self._pending: list[tuple[int, np.ndarray, np.ndarray]] = []

    def write(self, index: int, prob: np.ndarray, uncertainty: np.ndarray) -> FrameSummary:
        """Take frame `index` (prob, uncertainty (H, W) in [0, 1]); returns the summary of what will be stored.
        The frame reaches the store at `commit`."""
        stored_prob, stored_uncertainty = _encode(prob, self.encoding), _encode(uncertainty, self.encoding)
        self._pending.append((index, stored_prob, stored_uncertainty))
        return summarize_frame(_decode(stored_prob), _decode(stored_uncertainty))

    def _flush(self) -> None:
        if not self._pending:
            return
        self._pending.sort(key=lambda entry: entry[0])
        rows = np.array([index for index, _, _ in self._pending])
        whole = len(rows) == len(self.frame_ids) and bool(np.all(rows == np.arange(len(rows))))
        for position, name in enumerate(("prob", "uncertainty"), start=1):
            block = np.stack([entry[position] for entry in self._pending])
            if whole:
                self.arrays[name][:] = block
            else:
                self.arrays[name].set_orthogonal_selection((rows,), block)
        self._pending.clear()

    def commit(self) -> None:
        self._flush()
        self.group.attrs.update(
            {"frame_ids": list(self.frame_ids), "teacher": self.teacher, "encoding": self.encoding, "committed": True}
        )


def committed_expressions(store: zarr.Group) -> set[str]:
    return {name for name, group in store.groups() if group.attrs.get("committed") is True}


def read_pseudo_label(store: zarr.Group, expression_id: str) -> PseudoLabel:
    group = _committed_group(store, expression_id)
    return PseudoLabel(
        expression_id,
        tuple(group.attrs["frame_ids"]),
        _decode(group["prob"][:]),
        _decode(group["uncertainty"][:]),
        str(group.attrs["teacher"]),
    )


@dataclass(frozen=True)
class RefinedLabel:
    expression_id: str
    frame_ids: tuple[str, ...]
    label: np.ndarray  # (T, H, W) uint8: 0, 1, 255 = ignore
    weight: np.ndarray  # (T, H, W) float32 in [0, 1]
    pseudo_frames: tuple[str, ...]  # frames chosen for training from the pseudo-labels
    gt_frames: tuple[str, ...]


def write_refined(store: zarr.Group, refined: RefinedLabel) -> None:
    group = store.require_group(refined.expression_id)
    group.attrs.update({"committed": False})
    chunks = (1, *refined.label.shape[1:])
    group.create_array("label", data=refined.label, chunks=chunks, compressors=_COMPRESSORS, overwrite=True)
    group.create_array(
        "weight", data=quantize_unit(refined.weight), chunks=chunks, compressors=_COMPRESSORS, overwrite=True
    )
    group.attrs.update(
        {
            "frame_ids": list(refined.frame_ids),
            "pseudo_frames": list(refined.pseudo_frames),
            "gt_frames": list(refined.gt_frames),
            "committed": True,
        }
    )


def read_refined(store: zarr.Group, expression_id: str, frames: Iterable[str] | None = None) -> RefinedLabel:
    """One expression's refined labels; `frames` restricts the read to those frames' chunks."""
    group = _committed_group(store, expression_id)
    frame_ids = tuple(group.attrs["frame_ids"])
    if frames is None:
        rows, selected = slice(None), frame_ids
    else:
        selected = tuple(frames)
        position = {frame: index for index, frame in enumerate(frame_ids)}
        rows = [position[frame] for frame in selected]
    label, weight = group["label"], group["weight"]
    return RefinedLabel(
        expression_id,
        selected,
        label.get_orthogonal_selection((rows,)) if isinstance(rows, list) else label[rows],
        dequantize_unit(weight.get_orthogonal_selection((rows,)) if isinstance(rows, list) else weight[rows]),
        tuple(group.attrs["pseudo_frames"]),
        tuple(group.attrs["gt_frames"]),
    )


def chosen_pseudo_frames(store: zarr.Group) -> dict[str, tuple[str, ...]]:
    """Expression id -> the pseudo-labelled frames the refinement chose for training, for every expression of a
    refined store (read from the attributes alone, no array)."""
    return {name: tuple(group.attrs.get("pseudo_frames", ())) for name, group in store.groups()}


def _committed_group(store: zarr.Group, expression_id: str) -> zarr.Group:
    try:
        group = store[expression_id]
    except KeyError:
        raise StorageError(f"expression {expression_id} is not in the store {store.store}") from None
    if group.attrs.get("committed") is not True:
        raise StorageError(f"expression {expression_id} in {store.store} is not committed (its writer stopped early)")
    return group


INDEX_SCHEMA = pa.schema(
    [
        ("expression_id", pa.string()),
        ("frame", pa.string()),
        ("mean_entropy", pa.float32()),
        ("fg_fraction", pa.float32()),
        ("teacher", pa.string()),
        ("status", pa.string()),
    ]
)

FRAMES_SCHEMA = pa.schema(
    [
        ("expression_id", pa.string()),
        ("frame", pa.string()),
        ("source", pa.string()),  # "ground_truth" or "pseudo_label"
        ("kept", pa.bool_()),
        ("rank", pa.int32()),  # position by mean entropy among the expression's pseudo-labelled frames
        ("mean_entropy", pa.float32()),
        ("kept_ratio", pa.float32()),
        ("reason", pa.string()),
    ]
)


def index_row(expression_id: str, frame: str, summary: FrameSummary, teacher: str) -> dict:
    """One row of the infer index (INDEX_SCHEMA) for a committed frame."""
    return {
        "expression_id": expression_id,
        "frame": frame,
        "mean_entropy": summary.mean_entropy,
        "fg_fraction": summary.fg_fraction,
        "teacher": teacher,
        "status": "committed",
    }


def stored_index_rows(label: PseudoLabel) -> list[dict]:
    """The index rows of an expression already in the store, rebuilt from its arrays."""
    return [
        index_row(label.expression_id, frame, summarize_frame(label.prob[t], label.uncertainty[t]), label.teacher)
        for t, frame in enumerate(label.frame_ids)
    ]


def write_index(uri: str, rows: list[dict]) -> None:
    """Write the infer index atomically, sorted by expression and frame."""
    ordered = sorted(rows, key=lambda row: (row["expression_id"], row["frame"]))
    storage.write_parquet(uri, pa.Table.from_pylist(ordered, schema=INDEX_SCHEMA))


def read_index(uri: str) -> pa.Table:
    return storage.read_parquet(uri).cast(INDEX_SCHEMA)


@dataclass(frozen=True)
class FrameDecision:
    """Why one frame of an expression is or is not trained on: one row of the refine stage's frames table.

    source: 'ground_truth' (label = the annotation) or 'pseudo_label'.
    rank: place by mean entropy among the expression's pseudo-labelled frames (1 = most certain); None on GT.
    mean_entropy: mean per-pixel uncertainty of the teacher on the frame (lower = more certain).
    kept_ratio: share of the frame's pixels whose confidence reaches their class threshold (1 for GT frames).
    reason: 'ground_truth', or e.g. 'rank 1 of 12 by mean entropy 0.031' for a kept pseudo-labelled frame and
    'rank 5 of 12 by mean entropy 0.210; top 3 already kept' for a rejected one (other rejections name the span
    whose more certain frame was kept, the kept-pixel ratio, the predicted object area, the best IoU with the
    neighbouring frames, or a teacher that finds no object: `prvos_core.pseudo.refine`).
    """

    frame_index: int
    source: Literal["ground_truth", "pseudo_label"]
    kept: bool
    rank: int | None
    mean_entropy: float
    kept_ratio: float
    reason: str

    @property
    def decision(self) -> Literal["ground_truth", "kept", "rejected"]:
        """What happened to the frame, in one word (the inspect report colours frames by it)."""
        if self.source == "ground_truth":
            return "ground_truth"
        return "kept" if self.kept else "rejected"


def frame_decision_rows(
    expression_id: str, frame_ids: tuple[str, ...], decisions: Iterable[FrameDecision]
) -> list[dict]:
    """FRAMES_SCHEMA rows of one expression's decisions."""
    return [
        {
            "expression_id": expression_id,
            "frame": frame_ids[d.frame_index],
            "source": d.source,
            "kept": d.kept,
            "rank": d.rank,
            "mean_entropy": d.mean_entropy,
            "kept_ratio": d.kept_ratio,
            "reason": d.reason,
        }
        for d in decisions
    ]


def write_frame_decisions(uri: str, rows: list[dict]) -> None:
    """Write the refine stage's frames table atomically."""
    storage.write_parquet(uri, pa.Table.from_pylist(rows, schema=FRAMES_SCHEMA))


def read_frame_decisions(table: pa.Table, expression_id: str, frame_ids: tuple[str, ...]) -> list[FrameDecision]:
    """One expression's decisions from a frames table, in frame order (`frame_ids` gives the positions)."""
    position = {frame: index for index, frame in enumerate(frame_ids)}
    rows = [row for row in table.to_pylist() if row["expression_id"] == expression_id]
    names = [name for name in FRAMES_SCHEMA.names if name not in ("expression_id", "frame")]
    decisions = [FrameDecision(position[row["frame"]], *(row[name] for name in names)) for row in rows]
    return sorted(decisions, key=lambda d: d.frame_index)
