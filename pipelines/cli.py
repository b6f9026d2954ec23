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
from rich.table import Table

from prvos_core.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

app = typer.Typer(
    help="PRVOS: referring video object segmentation with uncertainty-aware pseudo-labeling, on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(
    help="Prepare datasets: synthetic data, merged JSON, Ref-DAVIS17 conversion.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
console = Console(stderr=True)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
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
) -> None:
    """Write a deterministic synthetic RVOS dataset in the Ref-YouTube-VOS layout."""
    from prvos_core.progress import progress_bar
    from prvos_core.synth import generate_synthetic

    total = videos + (valid_videos or max(1, videos // 4))
    with progress_bar("synth", total=total, unit="video") as bar:
        summary = generate_synthetic(
            out,
            videos=videos,
            valid_videos=valid_videos,
            frames=frames,
            size=size,
            label_every=label_every,
            seed=seed,
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
    from prvos_core.merge_json import merge_json

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
    from prvos_core.davis import convert_davis
    from prvos_core.progress import progress_bar

    with progress_bar("convert-davis", total=0, unit="video") as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        summary = convert_davis(davis_root, text_dir, out, annotations=annotations, progress=advance)
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
    stages: Annotated[str | None, typer.Option(help="Comma-separated stages to run, e.g. ingest.")] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address to join (default: embedded local Ray).")
    ] = None,
) -> None:
    """Run the pipeline: stages committed with the same fingerprint are skipped."""
    from prvos_core.config import load_config

    resolved = load_config(config, set_ or [])
    selected = tuple(s.strip() for s in stages.split(",") if s.strip()) if stages else None
    _run(resolved, run_id, selected, address)


@app.command("demo")
def demo(
    run_id: Annotated[str | None, typer.Option(help="Run id (default: a new one).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key of configs/demo.yaml.")] = None,
) -> None:
    """Synthetic data, configs/demo.yaml, embedded Ray, local MLflow: the whole method on a laptop."""
    from prvos_core.config import load_config

    _run(load_config(CONFIGS / "demo.yaml", set_ or []), run_id, None, None)


@app.command("status")
def status(
    run: Annotated[Path | None, typer.Argument(help="Run folder; default: list the runs under ./runs.")] = None,
    root: Annotated[Path, typer.Option(help="Run store root to list.")] = Path("runs"),
) -> None:
    """Show runs, or the stages of one run with state, duration and key metrics."""
    from pipelines.run_store import open_run

    out = Console()
    if run is None:
        runs = sorted(p.name for p in root.iterdir() if (p / "config.yaml").is_file()) if root.is_dir() else []
        if not runs:
            out.print(f"no runs under {root}")
        for name in runs:
            out.print(str(root / name))
        return
    store = open_run(str(run))
    store.read_config_dict()
    table = Table(title=f"run {store.run_id}")
    for column in ("stage", "state", "seconds", "metrics"):
        table.add_column(column)
    for stage in store.stages():
        marker = store.read_marker(stage)
        if marker is None:
            table.add_row(stage, "unfinished", "", "")
        else:
            metrics = ", ".join(f"{k}={v:g}" for k, v in sorted(marker.metrics.items()))
            table.add_row(stage, "committed", f"{marker.seconds:.1f}", metrics)
    out.print(table)


def _run(config, run_id: str | None, stages: tuple[str, ...] | None, address: str | None) -> None:
    from pipelines.pipeline import run_pipeline
    from pipelines.ray_session import ray_session

    with ray_session(address):
        report = run_pipeline(config, run_id=run_id, stages=stages)
    out = Console()
    table = Table(title=f"run {report.store.run_id}  ({report.store.run_dir})")
    for column in ("stage", "ran", "metrics"):
        table.add_column(column)
    for name, outcome in report.outcomes.items():
        metrics = ", ".join(f"{k}={v:g}" for k, v in sorted(outcome.result.metrics.items()))
        table.add_row(name, "yes" if outcome.ran else "skipped (committed)", metrics)
    out.print(table)
    out.print(f"next: prvos status {report.store.run_dir}", soft_wrap=True)


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
