"""`prvos review export|import`: the command line of the review loop (pipelines.review does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prvos_core.errors import UserError

review_app = typer.Typer(
    help="Send a round's least certain frames to people (Label Studio, COCO) and bring their masks back.",
    no_args_is_help=True,
)


@review_app.command("export")
def review_export(
    run: Annotated[Path, typer.Argument(help="Run folder (<run.root>/<run_id>).")],
    round_: Annotated[int, typer.Option("--round", help="Round whose teacher labels are reviewed (0 = the first).")],
    count: Annotated[int, typer.Option(help="(expression, frame) pairs to send.")],
    out: Annotated[Path, typer.Option(help="Export folder: tasks.json, label_config.xml, coco.json, images/.")],
    by: Annotated[
        str,
        typer.Option(
            help="uncertainty (least certain first), spread (each object's least certain frame, then its "
            "second, ...) or random."
        ),
    ] = "uncertainty",
    per_video: Annotated[int | None, typer.Option(help="At most this many pairs of one video.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of --by random.")] = 0,
    image_root: Annotated[
        Path | None, typer.Option(help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (default: --out).")
    ] = None,
) -> None:
    """The frames of a round's teacher most worth a person's look, as a Label Studio import and COCO."""
    from pipelines.review import export_queue

    if by not in ("uncertainty", "spread", "random"):
        raise UserError(f"--by must be uncertainty, spread or random (got {by!r})")
    done = export_queue(run.resolve(), round_, count, by, out, per_video=per_video, seed=seed, image_root=image_root)
    scores = [item.score for item in done.items]
    typer.echo(
        f"wrote {len(done.items)} of {done.candidates} pairs to {done.folder} (export {done.export_id}; "
        f"uncertainty {max(scores):.3f} .. {min(scores):.3f}); import {done.folder / 'tasks.json'} into a "
        f"Label Studio project with label_config.xml, then: prvos review import {run} --from EXPORT.json"
    )


@review_app.command("import")
def review_import(
    run: Annotated[Path, typer.Argument(help="Run folder the tasks were exported from.")],
    from_: Annotated[
        str, typer.Option("--from", help="A Label Studio JSON export file, or the URL of a running Label Studio.")
    ],
    project: Annotated[
        int | None, typer.Option(help="With a URL: the project's id (token: $LABEL_STUDIO_API_KEY).")
    ] = None,
) -> None:
    """Submitted masks become a new review layer beside the dataset; the next run/resume trains on them."""
    from pipelines.review import import_reviews

    done = import_reviews(run.resolve(), from_, project=project)
    typer.echo(
        f"review layer {done.layer}: {done.accepted} masks accepted, {done.rejected} quarantined "
        f"({done.layer / 'quarantine.parquet'}), {done.not_annotated} tasks not annotated yet; "
        f"next: prvos resume {run}"
    )
