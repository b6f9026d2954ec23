"""The pipeline: which stages run in which order, with which inputs, under which fingerprints."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pipelines.fingerprint import dataset_fingerprint, fingerprint
from pipelines.run_store import RunStore, new_run_id
from pipelines.runner import StageOutcome, run_stage
from prvos_core.config import PrvosConfig
from prvos_core.errors import ConfigError
from stages import ingest

log = logging.getLogger("prvos")

STAGES = ("ingest",)


@dataclass(frozen=True)
class PipelineReport:
    store: RunStore
    outcomes: dict[str, StageOutcome]


def ensure_dataset(config: PrvosConfig) -> None:
    """Create the synthetic dataset at `data.root` when the config asks for one and it is absent."""
    if config.data.synth is None or Path(config.data.root).exists():
        return
    from prvos_core.synth import generate_synthetic

    synth = config.data.synth
    log.info("creating the synthetic dataset at %s", config.data.root)
    generate_synthetic(
        Path(config.data.root),
        videos=synth.videos,
        valid_videos=synth.valid_videos,
        frames=synth.frames,
        size=tuple(synth.size),
        label_every=synth.label_every,
        seed=synth.seed,
    )


def run_pipeline(
    config: PrvosConfig, run_id: str | None = None, stages: tuple[str, ...] | None = None
) -> PipelineReport:
    """Run (or continue) the pipeline in `<run.root>/<run_id>/`; Ray must be initialised by the caller."""
    unknown = sorted(set(stages or ()) - set(STAGES))
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    selected = stages or STAGES
    store = RunStore(config.run.root, run_id or config.run.run_id or new_run_id(config.name))
    store.write_config(config)
    ensure_dataset(config)
    outcomes: dict[str, StageOutcome] = {}
    if "ingest" in selected:
        outcomes["ingest"] = _ingest(store, config)
    return PipelineReport(store, outcomes)


def _ingest(store: RunStore, config: PrvosConfig) -> StageOutcome:
    splits = (config.data.train_split, config.data.valid_split)
    section = {"ingest": config.section("ingest"), "data_root": config.data.root, "splits": list(splits)}
    stage_fingerprint = fingerprint("ingest", section, {"dataset": dataset_fingerprint(config.data.root)})

    def work(stage_dir: str):
        inputs = ingest.IngestInputs(config.data.root, splits, stage_dir, stage_fingerprint)
        return ingest.run(inputs, config.ingest)

    return run_stage(store, "ingest", stage_fingerprint, work)
