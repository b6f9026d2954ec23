"""The stage runner: skip what is committed with the same fingerprint, run the rest, commit markers last."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pipelines.run_store import RunStore, StageMarker, now_iso
from prvos_core import storage
from stages.result import StageResult

log = logging.getLogger("prvos")


@dataclass(frozen=True)
class StageOutcome:
    result: StageResult
    ran: bool  # False: skipped, its committed marker matched


def run_stage(store: RunStore, stage: str, fingerprint: str, work: Callable[[str], StageResult]) -> StageOutcome:
    """Run `work(stage_dir)` unless `stage` is committed with `fingerprint`; write its marker last.

    A committed stage with another fingerprint is cleared first (its inputs or config changed). An
    uncommitted folder is left in place so that a stage able to resume (train, infer) continues from it.
    """
    marker = store.read_marker(stage)
    if marker is not None and marker.fingerprint == fingerprint:
        log.info("%s: committed with the same fingerprint, skipped", stage)
        return StageOutcome(StageResult(stage, marker.outputs, marker.metrics, marker.fingerprint), ran=False)
    stage_dir = store.stage_dir(stage)
    if marker is not None:
        log.info("%s: fingerprint changed (%s -> %s), re-running", stage, marker.fingerprint, fingerprint)
        storage.remove(stage_dir)
    storage.makedirs(stage_dir)
    started_at, started = now_iso(), time.perf_counter()
    result = work(stage_dir)
    seconds = time.perf_counter() - started
    store.write_marker(
        StageMarker(stage, fingerprint, dict(result.outputs), dict(result.metrics), started_at, now_iso(), seconds)
    )
    return StageOutcome(StageResult(stage, result.outputs, result.metrics, fingerprint), ran=True)
