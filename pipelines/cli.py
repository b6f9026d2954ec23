"""The `prvos` command line.

Every error a user can cause is printed as one line (`error: ...`) with a non-zero exit code; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipelines.cli_evaluate import evaluate
from pipelines.cli_review import review_app
from prvos_core.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

app = typer.Typer(
    help="PRVOS: referring video object segmentation with uncertainty-aware pseudo-labeling, on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(
    help="Prepare datasets: synthetic data, merged JSON, Ref-DAVIS17 and MeViS conversion.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
console = Console(stderr=True)
app.add_typer(review_app, name="review")
app.command("evaluate")(evaluate)


def _setup_logging() -> None:
    # PRVOS's own lines at INFO; libraries (botocore's endpoint notes, MLflow's schema upgrades) only warn.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("prvos").setLevel(logging.INFO)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow's own handler, not the root logger's
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Folder to create (must not exist or be empty).")],
    videos: Annotated[int, typer.Option(help="Train videos.")] = 8,
    valid_videos: Annotated[int | None, typer.Option(help="Valid videos (default: videos // 4, at least 1).")] = None,
    frames: Annotated[int, typer.Option(help="Frames per video.")] = 20,
    size: Annotated[tuple[int, int], typer.Option(help="Frame height and width.")] = (96, 96),
    label_every: Annotated[int, typer.Option(help="Train masks on every K-th frame.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives byte-identical output.")] = 0,
    dynamics: Annotated[
        str, typer.Option(help="'linear': objects keep their look; 'varied': they sway, pulse, turn and shade.")
    ] = "linear",
    unlabelled_videos: Annotated[
        int,
        typer.Option(
            help="Extra train videos in the split 'unlabelled': expressions, no masks (their masks only in "
            "unlabelled/full_annotations, to score pseudo-labels). Use with --set data.unlabelled_split=unlabelled."
        ),
    ] = 0,
) -> None:
    """Write a deterministic synthetic RVOS dataset in the Ref-YouTube-VOS layout."""
    from prvos_core.datasets.synth import generate_synthetic
    from prvos_core.progress import progress_bar

    total = videos + (valid_videos or max(1, videos // 4)) + max(0, unlabelled_videos)
    with progress_bar("synth", total=total, unit="video") as bar:
        summary = generate_synthetic(
            out,
            videos=videos,
            valid_videos=valid_videos,
            frames=frames,
            size=size,
            label_every=label_every,
            seed=seed,
            dynamics=dynamics,
            unlabelled_videos=unlabelled_videos,
            progress=lambda done, _total: bar.update(done - bar.n),
        )
    typer.echo(f"wrote {out}: {summary}")


@data_app.command("merge-json")
def data_merge_json(
    root: Annotated[Path, typer.Argument(help="Dataset root in the Ref-YouTube-VOS layout.")],
    split: Annotated[str, typer.Option(help="Split to merge.")] = "train",
    out: Annotated[Path | None, typer.Option(help="Output file (default <root>/new_<split>.json).")] = None,
) -> None:
    """meta.json + meta_expressions.json -> new_<split>.json (videos -> objects -> expressions)."""
    from prvos_core.datasets.merge_json import merge_json

    typer.echo(f"wrote {merge_json(root, split, out)}")


@data_app.command("convert-davis")
def data_convert_davis(
    davis_root: Annotated[
        Path, typer.Option(help="DAVIS-2017 root (JPEGImages/480p, Annotations/480p, ImageSets/2017).")
    ],
    text_dir: Annotated[Path, typer.Option(help="Folder with the Ref-DAVIS17 Davis17_annot*.txt files.")],
    out: Annotated[Path, typer.Option(help="Output dataset root (Ref-YouTube-VOS layout).")],
    annotations: Annotated[
        str, typer.Option(help="Mask folder under the DAVIS root: Annotations or Annotations_unsupervised.")
    ] = "Annotations",
) -> None:
    """Ref-DAVIS17 (DAVIS-2017 + text files) -> the Ref-YouTube-VOS layout, expressions tagged by annotator."""
    from prvos_core.datasets.davis import convert_davis
    from prvos_core.progress import progress_bar

    with progress_bar("convert-davis", total=0, unit="video") as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        summary = convert_davis(davis_root, text_dir, out, annotations=annotations, progress=advance)
    typer.echo(f"wrote {out}: {summary}")


@data_app.command("convert-mevis")
def data_convert_mevis(
    mevis_root: Annotated[
        Path, typer.Argument(help="MeViS root: <split>/JPEGImages, meta_expressions.json, mask_dict.json per split.")
    ],
    out: Annotated[
        Path, typer.Option(help="Output dataset root (Ref-YouTube-VOS layout); must not exist or be empty.")
    ],
    splits: Annotated[
        str | None, typer.Option(help="Comma-separated splits, e.g. train,valid_u (default: every split folder).")
    ] = None,
) -> None:
    """MeViS (COCO RLE masks, expressions about several objects) -> the Ref-YouTube-VOS layout, every mask decoded
    once into palette PNGs; an expression's target is the union of its objects' masks."""
    from prvos_core.datasets.mevis import convert_mevis
    from prvos_core.progress import progress_bar

    chosen = tuple(s.strip() for s in splits.split(",") if s.strip()) if splits else None
    with progress_bar("convert-mevis", total=0, unit="video") as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        summary = convert_mevis(mevis_root, out, splits=chosen, progress=advance)
    typer.echo(f"wrote {out}: {summary}")


@app.command("run")
def run(
    config: Annotated[Path, typer.Argument(help="YAML config (see configs/).")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: section.key=value (repeatable).")
    ] = None,
    run_id: Annotated[
        str | None, typer.Option(help="Run id (default: a new one; an existing id continues that run).")
    ] = None,
    stages: Annotated[str | None, typer.Option(help="Comma-separated stage kinds to run, e.g. ingest,text.")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster to join, e.g. auto or 10.0.0.5:6379.")] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking server (default: SQLite under run.root).")
    ] = None,
) -> None:
    """Run the pipeline: stages committed with the same fingerprint are skipped."""
    from prvos_core.config import load_config

    resolved = load_config(config, _absolute_paths(config, set_ or []))
    selected = tuple(s.strip() for s in stages.split(",") if s.strip()) if stages else None
    _run(resolved, run_id, selected, address, tracking_uri)


@app.command("resume")
def resume(
    run: Annotated[str, typer.Argument(help="Run folder (<run.root>/<run_id>): a path or an s3:// URI.")],
    address: Annotated[str | None, typer.Option(help="Ray cluster to join.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking server.")] = None,
) -> None:
    """Continue a stopped or failed run from its first uncommitted stage, with the config it started with.

    Every committed stage is first re-checked against the checksums in its marker; a damaged one runs again
    (and so does what depends on it, where its new bytes differ)."""
    from pipelines.run_store import CONFIG_FILE, open_run
    from prvos_core.config import config_from_dict

    store = open_run(_run_folder(run))
    raw = store.read_config_dict()
    raw.setdefault("run", {})["root"] = store.root
    config = config_from_dict(raw, source=f"{store.run_dir}/{CONFIG_FILE}")
    _run(config, store.run_id, None, address, tracking_uri, verify="hashes")


@app.command("demo")
def demo(
    run_id: Annotated[str | None, typer.Option(help="Run id (default: a new one).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key of configs/demo.yaml.")] = None,
) -> None:
    """Synthetic data, configs/demo.yaml, embedded Ray, local MLflow: the whole method on a laptop."""
    from pipelines.report import print_table, round_curve
    from prvos_core.config import load_config

    demo_config = CONFIGS / "demo.yaml"
    # The demo writes its synthetic set when absent; a plain `prvos run configs/demo.yaml` only reads one.
    overrides = _absolute_paths(demo_config, ["data.synth.create=true", *(set_ or [])])
    store = _run(load_config(demo_config, overrides), run_id, None, None, None)
    out = Console()
    print_table(out, round_curve(store))
    out.print(
        "next: "
        f"prvos status {store.run_dir}  |  prvos inspect {store.run_dir} --round 0  |  prvos ui --root {store.root}",
        soft_wrap=True,
    )


@app.command("status")
def status(
    run: Annotated[
        str | None, typer.Argument(help="Run folder (a path or an s3:// URI); default: list the runs under --root.")
    ] = None,
    root: Annotated[Path, typer.Option(help="Run store root to list.")] = Path("runs"),
    verify: Annotated[
        bool, typer.Option("--verify", help="Re-check every committed stage's files against its checksums.")
    ] = False,
) -> None:
    """Show runs, or one run's rounds and stages with state, duration and key metrics."""
    # Reads config and markers only: this path imports no torch, Ray or stage (tests/pipelines/test_cli.py).
    from pipelines.report import print_table, status_table
    from pipelines.run_store import CONFIG_FILE, open_run

    out = Console()
    if run is None:
        runs = sorted(p.name for p in root.iterdir() if (p / CONFIG_FILE).is_file()) if root.is_dir() else []
        if not runs:
            out.print(f"no runs under {root}")
        for name in runs:
            out.print(str(root / name))
        return
    store = open_run(_run_folder(run))
    print_table(out, status_table(store))
    if verify:
        _verify(store, out)


def _verify(store, out: Console) -> None:
    """Print every damaged file of the run's committed stages; exit 1 when there is any."""
    from pipelines.integrity import verify_run
    from pipelines.run_store import stage_plan
    from prvos_core.config import config_from_dict

    plan = stage_plan(config_from_dict(store.read_config_dict()))
    damaged = verify_run(store, plan, hashes=True)
    for damage in (d for stage in plan for d in damaged.get(stage, ())):
        out.print(f"damaged: {damage}", markup=False, highlight=False, soft_wrap=True)
    if damaged:
        files = sum(map(len, damaged.values()))
        out.print(
            f"{files} damaged file(s) in {', '.join(damaged)}; `prvos resume {store.run_dir}` re-runs those stages",
            markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip
        raise typer.Exit(1)
    committed = [stage for stage in plan if store.read_marker(stage) is not None]
    out.print(f"verified: {len(committed)} committed stage(s), every recorded file intact", markup=False)


@app.command("ui")
def ui(
    root: Annotated[Path, typer.Option(help="Run store root whose mlflow.db to show.")] = Path("runs"),
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Start the MLflow UI on 127.0.0.1 over the run store's tracking database."""
    import subprocess

    from pipelines.lineage import ui_command

    command = ui_command(root, port)
    typer.echo(f"MLflow UI on http://127.0.0.1:{port} (Ctrl-C stops it)")
    raise typer.Exit(subprocess.call(command))


@app.command("inspect")
def inspect(
    run: Annotated[Path, typer.Argument(help="Run folder (<run.root>/<run_id>).")],
    round_: Annotated[int, typer.Option("--round", help="Pseudo-labeling round to show (0 = the first).")],
    expression: Annotated[str | None, typer.Option(help="Show this expression id only.")] = None,
    count: Annotated[int, typer.Option(help="Expressions shown by default: the most and least confident.")] = 4,
    out: Annotated[Path | None, typer.Option(help="Report folder (default <run>/inspect/r<R>).")] = None,
) -> None:
    """A static HTML report of a round's pseudo-labels (open index.html from disk), also logged to MLflow."""
    from pipelines.inspect_report import build_report

    report = build_report(run.resolve(), round_, expression_id=expression, out=out, count=count)
    logged = f"; MLflow artifacts {report.mlflow_artifacts}/" if report.mlflow_artifacts else ""
    typer.echo(f"wrote {report.folder / 'index.html'} ({len(report.pictures)} pictures, "
               f"{report.bytes / 1e6:.1f} MB){logged}")  # fmt: skip


@app.command("predict")
def predict(
    checkpoint: Annotated[Path, typer.Option(help="A train stage's checkpoint folder (<run>/r<k>-train/checkpoint).")],
    video: Annotated[Path, typer.Option(help="A folder of frames (*.jpg, *.png) or a video file (MP4).")],
    text: Annotated[str, typer.Option(help="The referring expression, e.g. 'a black swan'.")],
    out: Annotated[Path, typer.Option(help="Output folder: masks/<frame>.png, overlay.mp4, prediction.json.")],
    text_encoder: Annotated[
        str | None, typer.Option(help="Local text encoder folder (default: the one the checkpoint's run used).")
    ] = None,
    weights: Annotated[str, typer.Option(help="student or ema (the EMA teacher, when saved).")] = "student",
    fps: Annotated[float | None, typer.Option(help="Overlay frame rate (default: the video's, or 10).")] = None,
    threads: Annotated[int, typer.Option(help="Torch CPU threads (1 suits the tiny model; more for r50).")] = 1,
    device: Annotated[str, typer.Option(help="auto (CUDA when there is one), cpu or cuda.")] = "auto",
) -> None:
    """Segment the object a sentence refers to in every frame of a video with a trained checkpoint."""
    from prvos_core.inference.predict import resolve_device
    from prvos_core.inference.video import predict_video

    if weights not in ("student", "ema"):
        raise UserError(f"--weights must be student or ema (got {weights!r})")
    result = predict_video(
        checkpoint, video, text, out, text_encoder=text_encoder, weights=weights, fps=fps, threads=threads,
        device=resolve_device(device),
    )  # fmt: skip
    typer.echo(
        f"wrote {result.frames} masks and overlay.mp4 to {result.out} ({result.frames_per_second:.1f} frames/s; "
        f"object found in {result.foreground_frames} frames)"
    )


def _run_folder(run: str) -> str:
    """A run folder argument as a URI: local paths made absolute, object store URIs (s3://...) kept."""
    return run if "://" in run else str(Path(run).resolve())


PATH_SETTINGS = ("run.root", "data.root", "data.unlabelled_root")


def _absolute_paths(config: Path, overrides: list[str]) -> list[str]:
    """The overrides, after settings that make the config file's relative local paths absolute, with relative
    local paths given by `--set` made absolute too: Ray workers do not run in this folder, and a run can be
    resumed from any folder."""
    import yaml

    try:
        raw = yaml.safe_load(config.read_text(encoding="utf-8")) if config.is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raw = None  # load_config reports what is wrong with the file, in one line
    raw = raw if isinstance(raw, dict) else {}
    from_file = []
    for setting in PATH_SETTINGS:
        section, key = setting.split(".")
        value = raw[section].get(key) if isinstance(raw.get(section), dict) else None
        if isinstance(value, str):
            from_file.append(f"{setting}={value}")
    result = []
    for item in [*from_file, *overrides]:
        setting, equals, value = item.partition("=")
        value = value.strip()
        if setting.strip() in PATH_SETTINGS and equals and value and "://" not in value and not os.path.isabs(value):
            value = os.path.abspath(os.path.expanduser(value))
            item = f"{setting.strip()}={value}"
        result.append(item)
    return result


def _run(config, run_id: str | None, stages, address: str | None, tracking_uri: str | None, verify: str = "sizes"):
    from pipelines.lock import RunLock
    from pipelines.pipeline import run_pipeline
    from pipelines.ray_session import ray_session
    from pipelines.report import print_table, run_table
    from pipelines.run_store import RunStore, new_run_id

    store = RunStore(config.run.root, run_id or config.run.run_id or new_run_id(config.name))
    with RunLock(store.run_dir), ray_session(address, shared_paths=(config.run.root, config.data.root)):
        report = run_pipeline(config, run_id=store.run_id, stages=stages, tracking_uri=tracking_uri, verify=verify)
    out = Console()
    print_table(out, run_table(report.store, report.outcomes))
    out.print(f"next: prvos status {report.store.run_dir}", soft_wrap=True)
    return report.store


def main() -> None:
    _setup_logging()
    try:
        app()
    except UserError as error:
        console.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted; `prvos resume RUN` continues from the last committed stage", markup=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
