"""`prvos evaluate`: any checkpoint on any dataset split, without a run.

The stages a run uses, on an embedded local Ray (or the cluster at `--address`), in a work folder under --out:
ingest (the one split) -> text (the checkpoint's own text encoder) -> evaluate (the student in the stage's actor
pool), each committed with a fingerprint and a marker (pipelines.runner), so a second `prvos evaluate` into the
same --out reuses the manifest and the text cache and runs only what changed (another checkpoint: evaluate
alone). A MeViS root is converted first (prvos_core.datasets.mevis), into the work folder.

A split with masks gives the scores: J, F, J&F, P@0.5..0.9 and the overall IoU, and with Ref-DAVIS17's annotator
tags the same per annotator and their mean. A split without masks (Ref-YouTube-VOS valid/test, MeViS valid) gives
the benchmark's submission zip, checked against the split (prvos_core.datasets.submission).

```
<out>/request.json       what was asked; marks the folder as one `prvos evaluate` may write into again
<out>/results.json       scores or the submission's check, paths of the tables; written last
<out>/submission.zip     (a split without masks) the benchmark's zip
<out>/work/<stage>/      convert (MeViS), ingest, text, evaluate: per_expression.parquet, metrics.json
```
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from rich.table import Table

from pipelines.fingerprint import dataset_fingerprint, fingerprint
from pipelines.lock import RunLock
from pipelines.ray_session import ray_session
from pipelines.run_store import RunStore
from pipelines.runner import StageOutcome, run_stage
from prvos_core import storage
from prvos_core.config import EvaluateSection, IngestSection, TextSection
from prvos_core.data.layout import SplitPaths, read_json, write_json
from prvos_core.data.manifest import read_manifest
from prvos_core.data.source import locate, read_split, split_exists
from prvos_core.datasets import mevis
from prvos_core.datasets.submission import MEVIS, YOUTUBE_VOS, SubmissionCheck, check_submission, relayout
from prvos_core.errors import CheckpointError, DataError
from prvos_core.inference.predict import predictor_identity
from prvos_core.inference.video import model_input_size, text_encoder_of
from prvos_core.model.checkpoint import META_FILE, MODEL_FILE, read_checkpoint_meta
from prvos_core.progress import progress_bar
from stages import evaluate, ingest, text
from stages.result import StageResult, output

REQUEST_FILE = "request.json"
RESULTS_FILE = "results.json"
SUBMISSION_FILE = "submission.zip"
WORK = "work"
SHOWN = ("J", "F", "JF", "P0.5", "P0.6", "P0.7", "P0.8", "P0.9")  # the table's columns, stage metric names


@dataclass(frozen=True)
class EvaluationRequest:
    checkpoint: str  # a checkpoint folder (prvos_core.model.checkpoint)
    data: str  # a dataset root (Ref-YouTube-VOS layout, converted Ref-DAVIS17, MeViS) or a new_<split>.json
    split: str | None  # None: "valid", or the split a new_<split>.json names
    out: Path
    address: str | None = None  # a Ray cluster; None: an embedded local Ray
    text_encoder: str | None = None  # None: the one the checkpoint was trained with
    actors: int = 2
    gpus_per_actor: float = 0.0


@dataclass(frozen=True)
class EvaluationReport:
    """What `evaluate_checkpoint` found; results.json holds the same."""

    checkpoint: str
    data: str
    split: str
    benchmark: str  # "Ref-YouTube-VOS", "Ref-DAVIS17" (annotator tags) or "MeViS"
    model_size: str
    scores: dict[str, float]  # stage metric names (J, JF, P0.5, JF_annotator1, ...); {} for a submission
    expressions: int
    unscored: int  # expressions without a mask to score (not in the scores)
    frames: int
    quarantined: int  # items ingest set aside, each with its reason in the quarantine table
    quarantine_table: str
    per_expression: str | None
    submission: str | None
    submission_check: dict | None  # SubmissionCheck's fields
    results_file: str
    seconds: float


@dataclass(frozen=True, kw_only=True)
class ConvertResult(StageResult):
    """A MeViS split converted to the Ref-YouTube-VOS layout in the work folder."""

    stage: ClassVar[str] = "convert"
    dataset: str = output()
    videos: int
    expressions: int
    masks: int


def evaluate_checkpoint(request: EvaluationRequest) -> EvaluationReport:
    """Evaluate the checkpoint on the split (see the module docstring); every problem a user can cause raises a
    UserError in one line before any stage runs where it can be seen that early."""
    started = time.perf_counter()
    # Ray workers do not run in this process's folder: local paths go to them absolute.
    request = replace(request, **{key: _absolute(getattr(request, key)) for key in ("checkpoint", "data")})
    meta = checkpoint_meta(request.checkpoint)
    root, split, is_mevis = dataset_split(request.data, request.split)
    out = Path(request.out).expanduser().resolve()
    storage.check_replaceable(out, REQUEST_FILE, "prvos evaluate")
    for earlier in (RESULTS_FILE, SUBMISSION_FILE):  # an earlier request's answer must not pass for this one's
        (out / earlier).unlink(missing_ok=True)
    write_json(out / REQUEST_FILE, {k: str(v) if isinstance(v, Path) else v for k, v in asdict(request).items()})
    store = RunStore(str(out), WORK)
    encoder, max_tokens = text_encoder_of(request.checkpoint)
    text_section = TextSection(encoder=request.text_encoder or encoder or "minilm", max_tokens=max_tokens)
    section = EvaluateSection(actors=request.actors, gpus_per_actor=request.gpus_per_actor)
    with RunLock(store.run_dir), ray_session(request.address, shared_paths=(str(out), str(root))):
        dataset, dataset_input = _dataset(store, root, split, is_mevis, request.data)
        manifest = _ingest(store, dataset, split, dataset_input)
        cache = _text(store, manifest, text_section)
        if cache.result.dim != meta["text_dim"]:
            raise CheckpointError(
                f"text encoder {text_section.encoder} gives {cache.result.dim}-d words, checkpoint "
                f"{request.checkpoint} expects {meta['text_dim']}-d; pass --text-encoder with the one it was trained with"
            )
        scored = _evaluate(store, manifest, cache, request.checkpoint, split, model_input_size(meta), section)
    result = scored.result
    benchmark = _benchmark(dataset, split, is_mevis, result.scores)
    submission = check = None
    if result.submission is not None:
        submission, check = _submission(out, result.submission, dataset, split, manifest.result.manifest_dir,
                                        MEVIS if benchmark == MEVIS.benchmark else YOUTUBE_VOS)  # fmt: skip
    report = EvaluationReport(
        checkpoint=request.checkpoint, data=request.data, split=split, benchmark=benchmark, model_size=meta["size"],
        scores=dict(result.scores), expressions=result.expressions, unscored=result.unscored or 0,
        frames=result.frames, quarantined=manifest.result.quarantined,
        quarantine_table=manifest.result.quarantine_table, per_expression=result.per_expression,
        submission=submission, submission_check=None if check is None else asdict(check),
        results_file=str(out / RESULTS_FILE), seconds=time.perf_counter() - started,
    )  # fmt: skip
    write_json(out / RESULTS_FILE, {**asdict(report), "table": results_rows(report)})
    return report


def _absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())


def checkpoint_meta(checkpoint: str) -> dict[str, Any]:
    """checkpoint.json of a checkpoint folder whose weights are those of the model size it names; a missing
    folder, an unknown size, or weights of another size (or shape) raise CheckpointError in one line."""
    from prvos_core.model.builders import SIZES, model_spec

    if "://" not in checkpoint and not Path(checkpoint, META_FILE).is_file():
        raise CheckpointError(
            f"{checkpoint}: no checkpoint there ({META_FILE} missing); give a train stage's checkpoint folder, "
            "<run>/r<k>-train/checkpoint"
        )
    meta = read_checkpoint_meta(checkpoint)
    size = meta["size"]
    if size not in SIZES:
        raise CheckpointError(
            f"checkpoint {checkpoint} is of model size {size!r}, which this PRVOS does not build "
            f"({', '.join(SIZES)}); evaluate it with the PRVOS version that trained it"
        )
    # JSON keeps tuples as lists: compare the two specs as JSON does.
    current = json.loads(json.dumps(model_spec(size, text_dim=meta["text_dim"], trainable=meta["trainable"]).to_dict()))
    differing = [key for key in current if meta["spec"].get(key) != current[key]]
    if differing:
        key = differing[0]
        raise CheckpointError(
            f"checkpoint {checkpoint} holds a model of another size than {size!r} ({key} {meta['spec'].get(key)!r}, "
            f"{size!r} has {current[key]!r}); evaluate it with the PRVOS version that trained it"
        )
    if "://" not in checkpoint:
        _check_weights(checkpoint, meta)
    return meta


def _check_weights(checkpoint: str, meta: dict) -> None:
    """model.safetensors' tensor names and shapes (its header only) against the model its checkpoint.json
    names, built on the meta device (no memory, no weights)."""
    import safetensors
    import torch

    from prvos_core.model.builders import build_model

    with torch.device("meta"):
        model = build_model(meta["size"], text_dim=meta["text_dim"], pretrained=False, trainable=meta["trainable"])
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    path = Path(checkpoint, MODEL_FILE)
    try:
        with safetensors.safe_open(str(path), "pt") as weights:
            found = {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}
    except (OSError, safetensors.SafetensorError) as error:
        raise CheckpointError(f"{path} is unreadable ({error}); save the checkpoint again") from None
    mismatch = sorted(set(expected) ^ set(found)) or [n for n in sorted(expected) if expected[n] != found[n]]
    if mismatch:
        name = mismatch[0]
        detail = (
            f"{name} is {found[name]}, a {meta['size']!r} model has {expected[name]}"
            if name in found and name in expected
            else f"{len(mismatch)} tensor names differ, e.g. {name}"
        )
        raise CheckpointError(
            f"checkpoint {checkpoint}: {MODEL_FILE} holds weights of another model size than the {meta['size']!r} "
            f"its {META_FILE} names ({detail}); the folder mixes two checkpoints, save it again"
        )


def dataset_split(data: str, split: str | None) -> tuple[Path, str, bool]:
    """(dataset folder, split, whether it is a MeViS split to convert); a root without that split raises
    DataError naming the splits it has."""
    root, only_split = locate(data)
    if only_split is not None:
        if split not in (None, only_split):
            raise DataError(f"{data} holds split {only_split!r} only; drop --split or pass --split {only_split}")
        return root, only_split, False
    split = split or "valid"
    if split_exists(root, split):
        return root, split, False
    if split in mevis.mevis_splits(root):
        return root, split, True
    found = sorted(
        {path.parent.name for path in root.glob("meta_expressions/*/meta_expressions.json")}
        | {path.stem.removeprefix("new_") for path in root.glob("new_*.json")}
        | set(mevis.mevis_splits(root))
    )
    where = f"its splits: {', '.join(found)}; pass one with --split" if found else "it has no split at all"
    raise DataError(
        f"dataset root {data} has no split {split!r} (no meta_expressions/{split}/meta_expressions.json, "
        f"new_{split}.json or MeViS {split}/meta_expressions.json); {where}"
    )


def _dataset(store: RunStore, root: Path, split: str, is_mevis: bool, data: str) -> tuple[str, str]:
    """(the dataset to ingest, its fingerprint): `data` itself, or the MeViS split converted in the work folder."""
    if not is_mevis:
        return data, dataset_fingerprint(data)

    def work(folder: str) -> ConvertResult:
        with progress_bar("convert-mevis", total=0, unit="video") as bar:

            def advance(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            summary = mevis.convert_mevis(root, Path(folder, "dataset"), splits=(split,), progress=advance)
        return ConvertResult(dataset=str(summary.out), videos=summary.videos[split],
                             expressions=summary.expressions[split], masks=summary.masks)  # fmt: skip

    inputs = {"dataset": dataset_fingerprint(root / split)}
    outcome = run_stage(store, "convert", fingerprint("convert", {"split": split}, inputs), work, ConvertResult)
    return outcome.result.dataset, outcome.fingerprint


def _ingest(store: RunStore, dataset: str, split: str, dataset_input: str) -> StageOutcome[ingest.IngestResult]:
    section = {"ingest": IngestSection().model_dump(mode="json"), "data_root": dataset, "split": split}

    def work(folder: str) -> ingest.IngestResult:
        return ingest.run(ingest.IngestInputs(dataset, (split,), folder), IngestSection())

    stage_fingerprint = fingerprint("ingest", section, {"dataset": dataset_input})
    return run_stage(store, "ingest", stage_fingerprint, work, ingest.IngestResult)


def _text(store: RunStore, manifest: StageOutcome, section: TextSection) -> StageOutcome[text.TextResult]:
    def work(folder: str) -> text.TextResult:
        return text.run(text.TextInputs(manifest.result.manifest_dir, folder), section)

    stage_fingerprint = fingerprint("text", {"text": section.model_dump(mode="json")}, {"ingest": manifest.fingerprint})
    return run_stage(store, "text", stage_fingerprint, work, text.TextResult)


def _evaluate(store: RunStore, manifest: StageOutcome, cache: StageOutcome, checkpoint: str, split: str,
              size: tuple[int, int], section: EvaluateSection) -> StageOutcome[evaluate.EvaluateResult]:  # fmt: skip
    def work(folder: str) -> evaluate.EvaluateResult:
        inputs = evaluate.EvaluateInputs(
            manifest_dir=manifest.result.manifest_dir, text_cache=cache.result.cache,
            text_identity=cache.result.identity, checkpoint=checkpoint, split=split, out_dir=folder, input_size=size,
        )  # fmt: skip
        return evaluate.run(inputs, section)

    config = {"evaluate": section.model_dump(mode="json"), "split": split, "input_size": list(size)}
    inputs = {"ingest": manifest.fingerprint, "text": cache.fingerprint,
              "checkpoint": predictor_identity(checkpoint, "student")}  # fmt: skip
    return run_stage(store, "evaluate", fingerprint("evaluate", config, inputs), work, evaluate.EvaluateResult)


def _benchmark(dataset: str, split: str, is_mevis: bool, scores: dict[str, float]) -> str:
    """Which benchmark the split belongs to: MeViS (raw, or converted: its meta_expressions.json says so),
    Ref-DAVIS17 (annotator tags), else Ref-YouTube-VOS."""
    root, _ = locate(dataset)
    paths = SplitPaths(root, split)
    if is_mevis or (paths.meta_expressions.is_file() and _says_mevis(read_json(paths.meta_expressions))):
        return MEVIS.benchmark
    return "Ref-DAVIS17" if any(key.endswith("_annotator_mean") for key in scores) else YOUTUBE_VOS.benchmark


def _says_mevis(payload: Any) -> bool:
    return isinstance(payload, dict) and payload.get(mevis.BENCHMARK_KEY) == mevis.BENCHMARK


def _submission(
    out: Path, written: str, dataset: str, split: str, manifest_dir: str, layout
) -> tuple[str, SubmissionCheck]:
    """The stage's zip in the benchmark's layout at <out>/submission.zip, checked against the split."""
    target = out / SUBMISSION_FILE
    relayout(written, target, layout)
    sizes = {video.video_id: (video.height, video.width) for video in read_manifest(manifest_dir).videos}
    root, _ = locate(dataset)
    return str(target), check_submission(target, read_split(root, split), layout, sizes)


def results_rows(report: EvaluationReport) -> dict[str, dict[str, float]]:
    """The printed table as data: row name -> {J, F, J&F, P@0.5, ...}; the whole split, then each annotator and
    their mean when the expressions are tagged (Ref-DAVIS17)."""
    names = {key: key.replace("JF", "J&F").replace("P0", "P@0") for key in SHOWN}
    suffixes = {"all": ""}
    annotators = sorted({key.rsplit("_annotator", 1)[1] for key in report.scores if "_annotator" in key} - {"_mean"})
    suffixes.update({f"annotator {a}": f"_annotator{a}" for a in annotators})
    if annotators:
        suffixes["annotator mean"] = "_annotator_mean"
    return {
        row: {names[key]: report.scores[key + suffix] for key in SHOWN if key + suffix in report.scores}
        for row, suffix in suffixes.items()
        if report.scores
    }


def results_table(report: EvaluationReport) -> Table:
    """The scores as people read them (percent, one decimal), or the submission and its check."""
    dataset = Path(report.data).name
    title = f"{dataset} {report.split} ({report.benchmark}): {report.model_size} checkpoint {report.checkpoint}"
    rows = results_rows(report)
    table = Table(title=title)
    if not rows:
        table.add_column("submission")
        table.add_column("check")
        check = report.submission_check or {}
        table.add_row(str(report.submission), str(SubmissionCheck(**check)) if check else "")
        table.caption = _quarantined(report).removeprefix("; ")
        return table
    table.add_column("expressions")
    columns = list(next(iter(rows.values())))
    for column in columns:
        table.add_column(column, justify="right")
    for row, values in rows.items():
        table.add_row(row, *(f"{100 * values[column]:.1f}" for column in columns))
    caption = f"{report.expressions} expressions, {report.frames} frames scored"
    if "overall_iou" in report.scores:
        caption += f"; overall IoU {100 * report.scores['overall_iou']:.1f}"
    if report.unscored:
        caption += f"; {report.unscored} without a mask, not scored"
    table.caption = caption + _quarantined(report)
    return table


def _quarantined(report: EvaluationReport) -> str:
    if not report.quarantined:
        return ""
    return f"; ingest set {report.quarantined} item(s) aside: {report.quarantine_table}"
