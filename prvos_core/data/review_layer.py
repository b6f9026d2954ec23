"""Review layers: masks that people corrected, kept beside the dataset as versioned folders, read by ingest as
ground truth.

```
<dataset root>.review/                    beside the dataset root, never inside it: the user's files stay untouched
  v0001/                                  one `prvos review import`; appears whole (its staging folder is renamed last)
    layer.json                            version, the run/round/export it came from, time, counts
    corrections.parquet                   one row per accepted mask (CORRECTIONS_SCHEMA), with provenance
    quarantine.parquet                    one row per rejected annotation, with the reason
    masks/<split>/<video_id>/<target>/<frame_id>.png     palette PNG at the frame's size (MASK_VALUE = object)
  .v0002.staging-<id>/                    an import in progress or interrupted: never read
```
`target` is the object id, or `expression-<expression_id>` for an expression that names no object (a
Ref-YouTube-VOS valid video). Versions are read in order and a later correction of the same (split, video,
target, frame) replaces an earlier one. A mask is the object of that frame: every expression of the object gets
the frame as ground truth.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from prvos_core.data.manifest import QUARANTINE_SCHEMA, Expression, Manifest, QuarantineRow
from prvos_core.data.masks import write_palette_mask
from prvos_core.errors import DataError

LAYER_SUFFIX = ".review"
CORRECTIONS_FILE = "corrections.parquet"
QUARANTINE_FILE = "quarantine.parquet"
LAYER_FILE = "layer.json"
MASK_VALUE = 1  # the corrected object's value in a layer's palette PNG

CORRECTIONS_SCHEMA = pa.schema(
    [
        ("split", pa.string()),
        ("video_id", pa.string()),
        ("target", pa.string()),  # object id, or expression-<id> when the expression names no object
        ("frame_id", pa.string()),
        ("expression_id", pa.string()),  # the expression whose task it was
        ("mask", pa.string()),  # path of the PNG, relative to the layer folder
        ("empty", pa.bool_()),  # the annotator said the object is not in the frame
        ("annotator", pa.string()),
        ("annotated_at", pa.string()),  # ISO time the annotation was submitted or last updated
        ("run_id", pa.string()),  # the run whose teacher proposed the mask
        ("round_index", pa.int32()),
        ("export_id", pa.string()),
        ("task_id", pa.string()),  # the labelling tool's task id
    ]
)


@dataclass(frozen=True)
class Correction:
    """One corrected mask and where it came from (a row of CORRECTIONS_SCHEMA)."""

    split: str
    video_id: str
    target: str
    frame_id: str
    expression_id: str
    mask: str
    empty: bool
    annotator: str
    annotated_at: str
    run_id: str
    round_index: int
    export_id: str
    task_id: str


def target_of(expression: Expression) -> str:
    """What a correction is of: the expression's object, or the expression itself when it names none."""
    return expression.object_id or f"expression-{expression.expression_id}"


def layer_root(dataset_root: str | Path) -> Path:
    """The folder of a dataset's review layers: beside the dataset root (`<root>.review`)."""
    root = Path(dataset_root)
    if root.suffix == ".json":  # a merged new_<split>.json: its folder is the dataset
        root = root.parent
    return root.parent / f"{root.name}{LAYER_SUFFIX}"


def committed_layers(root: str | Path) -> list[Path]:
    """The committed layer folders under `root`, oldest first (staging folders are never listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("v") and (p / LAYER_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def layers_fingerprint(root: str | Path) -> str | None:
    """Hash of every committed layer's name and corrections (None when there is none): what ingest depends on."""
    layers = committed_layers(root)
    if not layers:
        return None
    digest = hashlib.sha256()
    for layer in layers:
        digest.update(layer.name.encode())
        digest.update((layer / CORRECTIONS_FILE).read_bytes())
    return digest.hexdigest()[:20]


def read_corrections(root: str | Path) -> dict[tuple[str, str, str, str], tuple[Path, Correction]]:
    """(split, video_id, target, frame_id) -> (its layer folder, the newest correction of it)."""
    newest: dict[tuple[str, str, str, str], tuple[Path, Correction]] = {}
    names = [f.name for f in fields(Correction)]
    for layer in committed_layers(root):
        for row in pq.read_table(layer / CORRECTIONS_FILE).select(names).to_pylist():
            correction = Correction(**row)
            key = (correction.split, correction.video_id, correction.target, correction.frame_id)
            newest[key] = (layer, correction)
    return newest


def write_layer(
    root: str | Path,
    accepted: list[tuple[Correction, np.ndarray]],
    rejected: list[QuarantineRow],
    about: dict,
) -> Path:
    """Write a new layer version: masks, corrections and quarantine into a staging folder, renamed last.

    accepted: each correction with its (H, W) 0/1 mask, all zeros for an object the annotator said is absent (its
    `mask` field is filled in here). A failure leaves
    only the staging folder, which no reader takes as a layer, and removes it.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        rows = []
        for correction, mask in accepted:
            relative = f"masks/{correction.split}/{correction.video_id}/{correction.target}/{correction.frame_id}.png"
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            write_palette_mask(staging / relative, (mask > 0).astype(np.uint8) * MASK_VALUE)
            rows.append(asdict(replace(correction, mask=relative)))
        pq.write_table(pa.Table.from_pylist(rows, schema=CORRECTIONS_SCHEMA), staging / CORRECTIONS_FILE)
        quarantine = pa.Table.from_pylist([asdict(row) for row in rejected], schema=QUARANTINE_SCHEMA)
        pq.write_table(quarantine, staging / QUARANTINE_FILE)
        return _commit(root, staging, {**about, "corrections": len(rows), "rejected": len(rejected)})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _commit(root: Path, staging: Path, about: dict) -> Path:
    """Give the staging folder the next free version name. The rename is atomic: two imports at once each get
    their own version, and a reader sees a layer whole or not at all (layer.json is written before the rename)."""
    while True:
        versions = [int(p.name[1:]) for p in committed_layers(root) if p.name[1:].isdigit()]
        version = f"v{max(versions, default=0) + 1:04d}"
        (staging / LAYER_FILE).write_text(json.dumps({"version": version, **about}, indent=2, sort_keys=True))
        try:
            os.rename(staging, root / version)
            return root / version
        except OSError:
            if not (root / version).exists():
                raise


def apply_corrections(manifest: Manifest, root: str | Path, split: str) -> Manifest:
    """The manifest with every committed correction of `split` as ground truth of its object's expressions.

    A corrected frame joins `gt_frames` (and leaves `hidden_frames`); its mask is read from the layer
    (`Expression.reviewed_frames` / `reviewed_masks`; an all-zero mask where the object is absent). A correction whose video or frame the manifest does not
    have goes to the quarantine table with the reason.
    """
    corrections = read_corrections(root)
    if not corrections:
        return manifest
    by_target: dict[tuple[str, str], list[tuple[str, str]]] = {}
    quarantine = list(manifest.quarantine)
    videos = {(v.split, v.video_id): v for v in manifest.videos}
    for (c_split, video_id, target, frame), (layer, correction) in sorted(corrections.items()):
        if c_split != split:
            continue
        video = videos.get((split, video_id))
        source = str(layer / CORRECTIONS_FILE)
        if video is None or frame not in video.frame_ids:
            what = f"video {video_id!r}" if video is None else f"frame {frame!r} of video {video_id!r}"
            quarantine.append(QuarantineRow(source, f"{video_id}/{frame}", f"{what} is not in the dataset"))
            continue
        by_target.setdefault((video_id, target), []).append((frame, str(layer / correction.mask)))
    expressions = []
    for expression in manifest.expressions:
        reviewed = (
            dict(by_target.get((expression.video_id, target_of(expression)), ())) if expression.split == split else {}
        )
        if reviewed:
            expression = _with_reviewed(expression, videos[(split, expression.video_id)].frame_ids, reviewed)
        expressions.append(expression)
    return Manifest(manifest.videos, tuple(expressions), tuple(quarantine))


def _with_reviewed(expression: Expression, frame_ids: tuple[str, ...], reviewed: dict[str, str]) -> Expression:
    frames = dict(zip(expression.reviewed_frames, expression.reviewed_masks, strict=True)) | reviewed
    gt = set(expression.gt_frames) | set(frames)
    ordered = tuple(f for f in frame_ids if f in frames)
    return replace(
        expression,
        gt_frames=tuple(f for f in frame_ids if f in gt),
        hidden_frames=tuple(f for f in expression.hidden_frames if f not in frames),
        reviewed_frames=ordered,
        reviewed_masks=tuple(frames[f] for f in ordered),
    )


def check_layer_root(root: str | Path) -> None:
    """Review layers are local folders: say so for an object-store dataset root."""
    if "://" in str(root):
        raise DataError(
            f"review layers are local folders; {root} is not: copy the dataset to a local path to review it"
        )
