"""The run store: `<root>/<run_id>/` with the resolved config, one folder per stage and a commit marker.

```
<root>/<run_id>/config.yaml            the resolved config the run started with
<root>/<run_id>/<stage>/               e.g. ingest/, r0-train/, r0-infer/
<root>/<run_id>/<stage>/_COMMITTED.json   written last: fingerprint, outputs, metrics, timings, checksums
```
A stage folder without its marker is unfinished: its contents are never taken as done. The marker's `files`
(relative path -> [size, blake2b]) let `pipelines.integrity` find damage later; markers written before
checksums existed have none and still load.

Stage names are spelled here only: `ingest`, `frames` and `text` once per run, `r<round>-<kind>` for the kinds
that run every round (`stage_name`, `split_stage`), in the order `stage_plan` gives. This module imports neither torch,
Ray nor a stage, so `prvos status` reads a run without them.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

import yaml

from prvos_core import storage
from prvos_core.config import PrvosConfig
from prvos_core.errors import StorageError, UserError
from prvos_core.storage import id_problem

MARKER = "_COMMITTED.json"
CONFIG_FILE = "config.yaml"

INGEST, FRAMES, TEXT = "ingest", "frames", "text"
TRAIN, INFER, REFINE, EVALUATE = "train", "infer", "refine", "evaluate"
STAGE_KINDS = (INGEST, FRAMES, TEXT, TRAIN, INFER, REFINE, EVALUATE)
ROUND_KINDS = (TRAIN, INFER, REFINE, EVALUATE)  # one folder per round: r<round>-<kind>


def stage_name(kind: str, round_index: int | None = None) -> str:
    """A stage's folder name: (INGEST) -> 'ingest'; (TRAIN, 1) -> 'r1-train'."""
    assert kind in STAGE_KINDS and (round_index is None) == (kind not in ROUND_KINDS), (kind, round_index)
    return kind if round_index is None else f"r{round_index}-{kind}"


def split_stage(name: str) -> tuple[int | None, str]:
    """The inverse of `stage_name`: 'r1-train' -> (1, 'train'); 'ingest' -> (None, 'ingest')."""
    if name.startswith("r") and "-" in name:
        head, kind = name.split("-", 1)
        return int(head[1:]), kind
    return None, name


def stage_plan(config: PrvosConfig) -> list[str]:
    """Stage folder names in execution order:
    ingest -> frames -> text -> [r-train -> r-infer -> r-refine] for r < rounds -> final train -> evaluate every
    student (or the last one only, `evaluate.rounds: last`); no frames stage with `frames.enabled: false`."""
    names = [stage_name(INGEST), *([stage_name(FRAMES)] if config.frames.enabled else []), stage_name(TEXT)]
    for round_index in range(config.rounds):
        names.append(stage_name(TRAIN, round_index))
        if config.pseudo_labels:
            names += [stage_name(INFER, round_index), stage_name(REFINE, round_index)]
    names.append(stage_name(TRAIN, config.rounds))
    scored = range(config.rounds + 1) if config.evaluate.rounds == "all" else [config.rounds]
    names += [stage_name(EVALUATE, round_index) for round_index in scored]
    return names


@dataclass(frozen=True)
class StageMarker:
    stage: str
    fingerprint: str
    outputs: dict[str, str]
    metrics: dict[str, float]
    started_at: str
    finished_at: str
    seconds: float
    files: dict[str, list] = field(default_factory=dict)  # relative path -> [size, blake2b]; {} in old markers


@dataclass(frozen=True)
class RunStore:
    root: str
    run_id: str

    def __post_init__(self) -> None:
        # The id becomes a folder name: `../x` or `a/b` would put the run outside run.root.
        if problem := id_problem(self.run_id):
            raise UserError(f"run id {self.run_id!r} is not safe as a folder name ({problem}); use [A-Za-z0-9._-]")

    @property
    def run_dir(self) -> str:
        return storage.join(self.root, self.run_id)

    def stage_dir(self, stage: str) -> str:
        return storage.join(self.run_dir, stage)

    def marker_uri(self, stage: str) -> str:
        return storage.join(self.stage_dir(stage), MARKER)

    def read_marker(self, stage: str) -> StageMarker | None:
        uri = self.marker_uri(stage)
        if not storage.exists(uri):
            return None
        payload = storage.read_json(uri)
        try:
            return StageMarker(**payload)
        except TypeError:
            raise StorageError(f"{uri}: not a PRVOS commit marker; `prvos resume` re-runs the stage") from None

    def write_marker(self, marker: StageMarker) -> None:
        storage.write_json(self.marker_uri(marker.stage), marker.__dict__)

    def write_config(self, config: PrvosConfig) -> None:
        text = yaml.safe_dump(config.to_dict(), sort_keys=False)
        storage.write_bytes(storage.join(self.run_dir, CONFIG_FILE), text.encode("utf-8"))

    def read_config_dict(self) -> dict:
        uri = storage.join(self.run_dir, CONFIG_FILE)
        if not storage.exists(uri):
            raise UserError(f"{self.run_dir} is not a PRVOS run (no {CONFIG_FILE}); give a folder made by `prvos run`")
        try:
            raw = yaml.safe_load(storage.read_bytes(uri).decode("utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError):
            raw = None
        if not isinstance(raw, dict):
            raise StorageError(f"{uri} is damaged (not a YAML mapping); restore it or start a new run")
        return raw

    def stages(self) -> list[str]:
        return [name for name in storage.listdir(self.run_dir) if storage.exists(self.stage_dir(name) + "/")]


def new_run_id(config_name: str) -> str:
    """`<config name>-<UTC time>`: sortable, unique enough for one user, safe as a folder name."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", config_name).strip(".-_") or "run"
    return f"{safe}-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def open_run(uri: str) -> RunStore:
    """A run folder given by path/URI -> its RunStore."""
    uri = str(uri).rstrip("/")
    run_id = uri.replace("\\", "/").rsplit("/", 1)[-1]
    root = uri[: -len(run_id)].rstrip("/") or "."
    if problem := id_problem(run_id):
        raise UserError(f"{uri}: not a run folder ({problem})")
    return RunStore(root, run_id)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def committed_marker(store: RunStore, stage: str) -> StageMarker:
    """A stage's commit marker; one line saying how to finish the run when the stage has not committed."""
    marker = store.read_marker(stage)
    if marker is None:
        raise UserError(f"{stage} has not committed in {store.run_dir}; `prvos resume {store.run_dir}` finishes it")
    return marker


def round_markers(store: RunStore, config: PrvosConfig, round_index: int) -> tuple[StageMarker, StageMarker]:
    """The infer and refine markers of a pseudo-labeling round, or one line saying which rounds there are."""
    if not config.pseudo_labels or config.rounds == 0:
        raise UserError(f"{store.run_dir} has no pseudo-labeling rounds (rounds: {config.rounds}); nothing to inspect")
    if not 0 <= round_index < config.rounds:
        choice = "0" if config.rounds == 1 else f"from 0 to {config.rounds - 1}"
        raise UserError(f"round {round_index} has no pseudo-labels in {store.run_dir}; pick --round {choice}")
    return committed_marker(store, stage_name(INFER, round_index)), committed_marker(
        store, stage_name(REFINE, round_index)
    )
