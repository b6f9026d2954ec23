"""The round loop: which stages run in which order, on which inputs, under which fingerprints.

    ingest -> frames -> text -> [r-train -> r-infer -> r-refine] for r < rounds -> final train -> evaluate every
    student

Round r's student trains on ground truth plus round r-1's refined pseudo-labels; its EMA teacher labels the
train split; refinement keeps, weights or ignores each pixel and picks frames. A stage's fingerprint hashes its
config section, its inputs' fingerprints and the code version, so a changed setting re-runs that stage and
everything downstream of it, nothing upstream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.fingerprint import dataset_fingerprint, fingerprint
from pipelines.lineage import Lineage
from pipelines.run_store import (
    FRAMES,
    INFER,
    INGEST,
    REFINE,
    STAGE_KINDS,
    TEXT,
    TRAIN,
    RunStore,
    new_run_id,
    split_stage,
    stage_name,
    stage_plan,
)
from pipelines.runner import Result, StageOutcome, Verify, run_stage
from prvos_core import storage
from prvos_core.config import PrvosConfig
from prvos_core.data.review_layer import layer_root, layers_fingerprint
from prvos_core.data.source import locate, require_unlabelled_split
from prvos_core.errors import ConfigError, DataError
from prvos_core.model.builders import input_size
from stages import evaluate, frames, infer, ingest, refine, text, train

log = logging.getLogger("prvos")


@dataclass
class PipelineReport:
    store: RunStore
    outcomes: dict[str, StageOutcome] = field(default_factory=dict)

    def ran(self) -> list[str]:
        return [name for name, outcome in self.outcomes.items() if outcome.ran]


def ensure_dataset(config: PrvosConfig) -> None:
    """Create the synthetic dataset at `data.root` when the config says so (`data.synth.create`, as `prvos demo`
    does) and the folder is absent. Otherwise an absent root (local or on an object store), a bucket without
    credentials, or an absent split of unlabelled videos is the user's error, named before any stage (or Ray
    or MLflow) starts: a mistyped root never becomes a synthetic set, even in a config that holds synthesis
    parameters."""
    data, synth = config.data, config.data.synth
    local = storage.is_local(data.root)
    if synth is not None and synth.create:
        if not local:
            raise ConfigError(f"data.synth.create writes a local folder, but data.root is {data.root}; synthesize "
                              "locally and copy the set there, or drop data.synth.create")  # fmt: skip
        if not Path(data.root).exists():
            _synthesize(config)
    elif synth is not None and local and not Path(data.root).exists():
        raise DataError(
            f"dataset root {data.root} not found; fix data.root, or set data.synth.create=true to write the "
            "synthetic set there (as `prvos demo` does)"
        )
    # On an object store too: a root without credentials or a mistyped bucket is one line before MLflow and Ray.
    locate(data.root)
    unlabelled_root = config.data.unlabelled_root or config.data.root
    if config.data.unlabelled_split:
        require_unlabelled_split(locate(unlabelled_root)[0], config.data.unlabelled_split)


def _synthesize(config: PrvosConfig) -> None:
    from prvos_core.datasets.synth import generate_synthetic

    synth = config.data.synth
    log.info("creating the synthetic dataset at %s", config.data.root)
    generate_synthetic(
        Path(config.data.root),
        videos=synth.videos,
        valid_videos=synth.valid_videos,
        frames=synth.frames,
        size=tuple(synth.size),
        label_every=synth.label_every,
        dynamics=synth.dynamics,
        seed=synth.seed,
        unlabelled_videos=synth.unlabelled_videos,
    )


def run_pipeline(
    config: PrvosConfig,
    run_id: str | None = None,
    stages: tuple[str, ...] | None = None,
    tracking_uri: str | None = None,
    verify: Verify = "sizes",
) -> PipelineReport:
    """Run (or continue) the pipeline in `<run.root>/<run_id>/`. Ray: the caller's, or the one an open
    `pipelines.ray_session.ray_session` starts when the first stage has work to do.

    `stages` restricts the run to stage kinds (e.g. ("ingest",)); the stages they need must be committed.
    `verify`: how committed stages are checked before being skipped (pipelines.runner.run_stage); a damaged
    stage runs again, and so does every stage downstream of one whose re-run wrote other bytes.
    """
    unknown = sorted(set(stages or ()) - set(STAGE_KINDS))
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGE_KINDS)}")
    store = RunStore(config.run.root, run_id or config.run.run_id or new_run_id(config.name))
    store.write_config(config)
    ensure_dataset(config)
    report = PipelineReport(store)
    with Lineage(store, config, tracking_uri) as lineage:
        context = _Context(config, store, report, lineage, set(stages or STAGE_KINDS), verify)
        for name in stage_plan(config):
            round_index, kind = split_stage(name)
            if kind not in context.selected:
                continue
            getattr(context, f"_{kind}")(name, round_index)
    return report


@dataclass
class _Context:
    config: PrvosConfig
    store: RunStore
    report: PipelineReport
    lineage: Lineage
    selected: set[str]
    verify: Verify = "sizes"
    changed: set[str] = field(default_factory=set)  # fingerprints of stages that re-ran and wrote other bytes

    def outcome(self, name: str, result_type: type[Result]) -> StageOutcome[Result]:
        """The outcome of a stage this one depends on: run now, or committed before."""
        if name in self.report.outcomes:
            return self.report.outcomes[name]
        marker = self.store.read_marker(name)
        if marker is None:
            raise ConfigError(f"stage {name} has not run in {self.store.run_dir}; run the pipeline without --stages")
        return StageOutcome(result_type.from_marker(marker.outputs, marker.metrics), marker.fingerprint, ran=False)

    def stage(self, name: str, round_index: int | None, section: dict, inputs: dict[str, str],
              work: Callable[[str], Result], result_type: type[Result]) -> None:  # fmt: skip
        stage_fingerprint = fingerprint(name, section, inputs)
        # Fingerprints hash settings, not bytes: an input stage that re-ran (repaired) and wrote other bytes
        # than before makes this stage's committed outputs stale although its fingerprint is the same.
        stale = any(value in self.changed for value in inputs.values())
        outcome = run_stage(self.store, name, stage_fingerprint, work, result_type, verify=self.verify, force=stale)
        if outcome.changed:
            self.changed.add(stage_fingerprint)
        self.report.outcomes[name] = outcome
        if outcome.ran:
            self.lineage.stage_finished(name, round_index, section, outcome.result, stage_fingerprint)

    def _ingest(self, name: str, round_index: None) -> None:
        data = self.config.data
        splits = (data.train_split, data.valid_split)
        section = {
            "ingest": self.config.section("ingest"),
            "data_root": data.root,
            "splits": list(splits),
            "train_labels": data.train_labels,
            "unlabelled_split": data.unlabelled_split,
            "unlabelled_root": data.unlabelled_root,
        }
        inputs = {"dataset": dataset_fingerprint(data.root)}
        # Unlabelled videos in another root: a change to its files re-runs ingest as one to data.root does.
        if data.unlabelled_split and data.unlabelled_root not in (None, data.root):
            inputs["unlabelled_dataset"] = dataset_fingerprint(data.unlabelled_root)
        # Masks people corrected (`prvos review import`), beside the dataset: a new layer re-runs ingest.
        review = None if "://" in str(data.root) else layer_root(data.root)
        if review is not None and (reviewed := layers_fingerprint(review)) is not None:
            inputs["review"] = reviewed
        else:
            review = None

        def work(folder: str) -> ingest.IngestResult:
            ingest_inputs = ingest.IngestInputs(
                data.root,
                splits,
                folder,
                train_split=data.train_split,
                train_labels=data.train_labels,
                unlabelled_split=data.unlabelled_split,
                unlabelled_root=data.unlabelled_root,
                review_root=None if review is None else str(review),
            )
            return ingest.run(ingest_inputs, self.config.ingest)

        self.stage(name, None, section, inputs, work, ingest.IngestResult)
        self.lineage.log_manifest(self.outcome(name, ingest.IngestResult).result)

    def _frames(self, name: str, round_index: None) -> None:
        manifest = self.outcome(stage_name(INGEST), ingest.IngestResult)
        config = self.config
        size = input_size(config.model.size, config.model.input_size)

        def work(folder: str) -> frames.FramesResult:
            frames_inputs = frames.FramesInputs(manifest.result.manifest_dir, folder, size, config.train.min_crop)
            return frames.run(frames_inputs, config.frames)

        section = {"frames": config.section("frames"), "input_size": list(size), "min_crop": config.train.min_crop}
        self.stage(name, None, section, {"ingest": manifest.fingerprint}, work, frames.FramesResult)

    def frame_store(self, inputs: dict[str, str]) -> str | None:
        """The frame store the model stages read (its fingerprint joins `inputs`), or None without a frames stage."""
        if not self.config.frames.enabled:
            return None
        stored = self.outcome(stage_name(FRAMES), frames.FramesResult)
        inputs["frames"] = stored.fingerprint
        return stored.result.store

    def _text(self, name: str, round_index: None) -> None:
        manifest = self.outcome(stage_name(INGEST), ingest.IngestResult)

        def work(folder: str) -> text.TextResult:
            return text.run(text.TextInputs(manifest.result.manifest_dir, folder), self.config.text)

        section = {"text": self.config.section("text")}
        self.stage(name, None, section, {"ingest": manifest.fingerprint}, work, text.TextResult)

    def _train(self, name: str, round_index: int) -> None:
        config = self.config
        manifest = self.outcome(stage_name(INGEST), ingest.IngestResult)
        text_cache = self.outcome(stage_name(TEXT), text.TextResult)
        inputs = {"ingest": manifest.fingerprint, "text": text_cache.fingerprint}
        frame_store = self.frame_store(inputs)
        refined_store = init_checkpoint = None
        if round_index > 0 and config.pseudo_labels:
            refined = self.outcome(stage_name(REFINE, round_index - 1), refine.RefineResult)
            inputs["refine"], refined_store = refined.fingerprint, refined.result.refined
        if round_index > 0 and config.train.init == "previous":
            previous = self.outcome(stage_name(TRAIN, round_index - 1), train.TrainResult)
            inputs["previous"], init_checkpoint = previous.fingerprint, previous.result.checkpoint
        section = {
            "train": config.section("train"),
            "model": config.section("model"),
            "seed": config.run.seed,
            "split": config.data.train_split,
        }

        def work(folder: str) -> train.TrainResult:
            train_inputs = train.TrainInputs(
                manifest_dir=manifest.result.manifest_dir,
                text_cache=text_cache.result.cache,
                text_identity=text_cache.result.identity,
                text_dim=text_cache.result.dim,
                split=config.data.train_split,
                out_dir=folder,
                model=config.model,
                refined_store=refined_store,
                init_checkpoint=init_checkpoint,
                seed=config.run.seed,
                round_index=round_index,
                text=config.text,
                frame_store=frame_store,
            )
            return train.run(train_inputs, config.train)

        self.stage(name, round_index, section, inputs, work, train.TrainResult)

    def _infer(self, name: str, round_index: int) -> None:
        self._run_model(name, round_index, infer, "infer", self.config.data.train_split)

    def _evaluate(self, name: str, round_index: int) -> None:
        self._run_model(name, round_index, evaluate, "evaluate", self.config.data.valid_split)

    def _run_model(self, name: str, round_index: int, module, section: str, split: str) -> None:
        """infer and evaluate: round r's checkpoint run over every expression of a split on a Ray actor pool."""
        config = self.config
        manifest = self.outcome(stage_name(INGEST), ingest.IngestResult)
        text_cache = self.outcome(stage_name(TEXT), text.TextResult)
        student = self.outcome(stage_name(TRAIN, round_index), train.TrainResult)
        inputs = {"ingest": manifest.fingerprint, "text": text_cache.fingerprint, "train": student.fingerprint}
        frame_store = self.frame_store(inputs)
        inputs_class = module.InferInputs if module is infer else module.EvaluateInputs
        result_type = module.InferResult if module is infer else module.EvaluateResult

        def work(folder: str):
            stage_inputs = inputs_class(
                manifest_dir=manifest.result.manifest_dir,
                text_cache=text_cache.result.cache,
                text_identity=text_cache.result.identity,
                checkpoint=student.result.checkpoint,
                split=split,
                out_dir=folder,
                input_size=input_size(config.model.size, config.model.input_size),
                round_index=round_index,
                frame_store=frame_store,
            )
            return module.run(stage_inputs, getattr(config, section))

        self.stage(name, round_index, {section: config.section(section), "split": split}, inputs, work, result_type)

    def _refine(self, name: str, round_index: int) -> None:
        config = self.config
        manifest = self.outcome(stage_name(INGEST), ingest.IngestResult)
        pseudo = self.outcome(stage_name(INFER, round_index), infer.InferResult)
        section = {"refine": config.section("refine"), "split": config.data.train_split}

        def work(folder: str) -> refine.RefineResult:
            refine_inputs = refine.RefineInputs(
                manifest_dir=manifest.result.manifest_dir,
                pseudo_store=pseudo.result.pseudo,
                out_dir=folder,
                split=config.data.train_split,
                round_index=round_index,
            )
            return refine.run(refine_inputs, config.refine)

        inputs = {"ingest": manifest.fingerprint, "infer": pseudo.fingerprint}
        self.stage(name, round_index, section, inputs, work, refine.RefineResult)
