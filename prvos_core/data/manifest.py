"""The ingest manifest: record types and their Parquet schemas, written once here beside the reader.

Three tables live in the ingest stage's folder:
- `videos.parquet`: one row per usable video (frames that decoded, their size, frames with usable masks);
- `expressions.parquet`: one row per usable referring expression, with a stable `expression_id`;
- `quarantine.parquet`: one row per rejected item (source file, item, reason), so nothing vanishes silently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import cached_property

import pyarrow as pa

from prvos_core import storage
from prvos_core.data.layout import SplitPaths

VIDEOS_FILE = "videos.parquet"
EXPRESSIONS_FILE = "expressions.parquet"
QUARANTINE_FILE = "quarantine.parquet"


@dataclass(frozen=True)
class Video:
    video_id: str
    split: str
    dataset_root: str  # URI of the dataset root; frames are <root>/<split>/JPEGImages/<video>/<frame>.jpg
    frame_ids: tuple[str, ...]  # every usable frame, sorted
    annotated_frames: tuple[str, ...]  # frames whose mask PNG is usable
    height: int
    width: int
    # False: an unlabelled video (expressions, no mask used for training or by the teacher), labelled whole by
    # the teacher and trained on through its refined pseudo-labels (`data.unlabelled_split`).
    labelled: bool = True
    folder: str = ""  # the split folder under dataset_root holding its files; "" = `split`

    @property
    def n_frames(self) -> int:
        return len(self.frame_ids)

    @property
    def paths(self) -> SplitPaths:
        """Where the video's frames and masks are (its split folder of its dataset root)."""
        return SplitPaths(storage.dataset_path(self.dataset_root), self.folder or self.split)


@dataclass(frozen=True)
class Expression:
    expression_id: str  # stable: ids.expression_id(video, object, text)
    exp_key: str  # the key in meta_expressions.json (the Ref-YouTube-VOS submission folder name)
    split: str
    video_id: str
    object_id: str  # "" when the split does not say which object (Ref-YouTube-VOS valid)
    category: str | None
    text: str
    gt_frames: tuple[str, ...]  # frames with a usable mask that shows this object and that training may use
    all_frames: tuple[str, ...]
    annotator: int | None = None  # Ref-DAVIS17: which annotator wrote it (1 or 2)
    kind: str | None = None  # Ref-DAVIS17: "first_frame" or "full_video"
    # Frames with a usable mask of this object that the label regime (`data.train_labels`) hides from training
    # and from the teacher; read only to score pseudo-labels.
    hidden_frames: tuple[str, ...] = ()
    # Ground-truth frames whose mask a person corrected (prvos_core.data.review_layer), and each one's mask file
    # (a palette PNG, object = review_layer.MASK_VALUE); they are in gt_frames too.
    reviewed_frames: tuple[str, ...] = ()
    reviewed_masks: tuple[str, ...] = ()

    @property
    def variant(self) -> str:
        """What keeps equal texts of one object apart (annotator and kind), '' when the dataset has none."""
        return f"{self.annotator or ''}{self.kind or ''}"


@dataclass(frozen=True)
class QuarantineRow:
    source: str  # the file the item came from
    item: str  # what was rejected: a video, frame, mask or expression, named so a person can find it
    reason: str


_strings = pa.list_(pa.string())

VIDEOS_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("split", pa.string()),
        ("dataset_root", pa.string()),
        ("frame_ids", _strings),
        ("annotated_frames", _strings),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("n_frames", pa.int32()),
        ("labelled", pa.bool_()),
        ("folder", pa.string()),
    ]
)

EXPRESSIONS_SCHEMA = pa.schema(
    [
        ("expression_id", pa.string()),
        ("exp_key", pa.string()),
        ("split", pa.string()),
        ("video_id", pa.string()),
        ("object_id", pa.string()),
        ("category", pa.string()),
        ("text", pa.string()),
        ("gt_frames", _strings),
        ("all_frames", _strings),
        ("annotator", pa.int8()),
        ("kind", pa.string()),
        ("hidden_frames", _strings),
        ("reviewed_frames", _strings),
        ("reviewed_masks", _strings),
    ]
)

QUARANTINE_SCHEMA = pa.schema([("source", pa.string()), ("item", pa.string()), ("reason", pa.string())])


@dataclass(frozen=True)
class Manifest:
    videos: tuple[Video, ...]
    expressions: tuple[Expression, ...]
    quarantine: tuple[QuarantineRow, ...]

    def video(self, video_id: str, split: str) -> Video:
        try:
            return self._videos_by_key[(split, video_id)]
        except KeyError:
            raise KeyError(f"video {video_id!r} of split {split!r} is not in the manifest") from None

    def video_of(self, expression: Expression) -> Video:
        """The video an expression refers to."""
        return self.video(expression.video_id, expression.split)

    @cached_property
    def _videos_by_key(self) -> dict[tuple[str, str], Video]:
        return {(video.split, video.video_id): video for video in self.videos}

    def split_expressions(self, split: str) -> list[Expression]:
        return [expression for expression in self.expressions if expression.split == split]


def _table(records, schema: pa.Schema) -> pa.Table:
    columns = {field.name: [] for field in schema}
    for record in records:
        row = asdict(record)
        for name in columns:
            value = row[name] if name != "n_frames" else record.n_frames
            columns[name].append(list(value) if isinstance(value, tuple) else value)
    return pa.table(columns, schema=schema)


def _records(table: pa.Table, cls) -> tuple:
    # Columns added later (e.g. hidden_frames) are absent from older manifests: their fields keep the default.
    names = [f.name for f in fields(cls) if f.name in table.column_names]
    rows = table.select(names).to_pylist()
    return tuple(cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in row.items()}) for row in rows)


def write_manifest(folder: str, manifest: Manifest) -> dict[str, str]:
    """Write the three tables into `folder`; returns their URIs by name."""
    uris = {
        "videos": storage.join(folder, VIDEOS_FILE),
        "expressions": storage.join(folder, EXPRESSIONS_FILE),
        "quarantine": storage.join(folder, QUARANTINE_FILE),
    }
    storage.write_parquet(uris["videos"], _table(manifest.videos, VIDEOS_SCHEMA))
    storage.write_parquet(uris["expressions"], _table(manifest.expressions, EXPRESSIONS_SCHEMA))
    storage.write_parquet(uris["quarantine"], _table(manifest.quarantine, QUARANTINE_SCHEMA))
    return uris


def read_manifest(folder: str) -> Manifest:
    return Manifest(
        videos=_records(storage.read_parquet(storage.join(folder, VIDEOS_FILE)), Video),
        expressions=_records(storage.read_parquet(storage.join(folder, EXPRESSIONS_FILE)), Expression),
        quarantine=_records(storage.read_parquet(storage.join(folder, QUARANTINE_FILE)), QuarantineRow),
    )
