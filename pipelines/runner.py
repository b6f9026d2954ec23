"""The stage runner: skip what is committed with the same fingerprint and intact, run the rest, markers last."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from pipelines import integrity
from pipelines.ray_session import ensure_ray
from pipelines.run_store import RunStore, StageMarker, now_iso
from prvos_core import storage
from prvos_core.errors import StorageError
from stages.result import StageResult

log = logging.getLogger("prvos")

Verify = Literal["none", "sizes", "hashes"]
Result = TypeVar("Result", bound=StageResult)


@dataclass(frozen=True)
class StageOutcome(Generic[Result]):
    result: Result  # what the stage returned, or what its commit marker recorded
    fingerprint: str  # the fingerprint it ran (or was committed) under
    ran: bool  # False: skipped, its committed marker matched and its files were intact
    changed: bool = False  # ran, and what it wrote differs from what its previous marker recorded (or none did)
    repaired: tuple[integrity.Damage, ...] = ()  # the damage that made a committed stage run again


def run_stage(
    store: RunStore,
    stage: str,
    fingerprint: str,
    work: Callable[[str], Result],
    result_type: type[Result],
    *,
    verify: Verify = "sizes",
    force: bool = False,
) -> StageOutcome[Result]:
    """Run `work(stage_dir)` unless `stage` is committed with `fingerprint` and its files check out; write
    its marker (with the checksums of every file the stage wrote) last. A skipped stage's result is
    `result_type` read from its marker.

    verify: how a committed stage's files are checked before it is skipped ("sizes": one listing, "hashes":
    every byte); a damaged stage is cleared and run again. force: run even if committed (an input changed).
    A committed stage with another fingerprint is cleared first. An uncommitted folder is left in place so
    that a stage able to resume (train, infer) continues from it.
    """
    stage_dir = store.stage_dir(stage)
    try:
        marker = store.read_marker(stage)
        committed = None if marker is None else result_type.from_marker(marker.outputs, marker.metrics)
    except StorageError as error:
        log.warning("%s: unreadable commit marker (%s); re-running the stage", stage, error)
        storage.remove(stage_dir)
        marker = committed = None
    damage: list[integrity.Damage] = []
    if marker is not None and marker.fingerprint == fingerprint and not force:
        if verify != "none":
            damage = integrity.verify(stage, stage_dir, marker.files, hashes=verify == "hashes")
        if not damage:
            log.info("%s: committed with the same fingerprint, skipped", stage)
            return StageOutcome(committed, fingerprint, ran=False)
        shown = "; ".join(map(str, damage[:3])) + (f" and {len(damage) - 3} more" if len(damage) > 3 else "")
        log.warning("%s: %d damaged file(s) (%s); re-running the stage", stage, len(damage), shown)
        storage.remove(stage_dir)
    elif marker is not None:
        reason = "an input was re-run" if force else f"fingerprint changed ({marker.fingerprint} -> {fingerprint})"
        log.info("%s: %s, re-running", stage, reason)
        storage.remove(stage_dir)
    storage.makedirs(stage_dir)
    ensure_ray()  # a run whose stages are all committed never starts Ray
    started_at, started = now_iso(), time.perf_counter()
    result = work(stage_dir)
    seconds = time.perf_counter() - started
    files = integrity.checksums(stage_dir)
    outputs, metrics = result.to_marker()
    store.write_marker(StageMarker(stage, fingerprint, outputs, metrics, started_at, now_iso(), seconds, files))
    changed = marker is None or not marker.files or integrity.results(files) != integrity.results(marker.files)
    return StageOutcome(result, fingerprint, True, changed, tuple(damage))
