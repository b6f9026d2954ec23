"""`prvos evaluate`: any checkpoint on any dataset split, without a run (pipelines.evaluate_any does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from prvos_core.errors import UserError


def evaluate(
    checkpoint: Annotated[str, typer.Option(help="A train stage's checkpoint folder (<run>/r<k>-train/checkpoint).")],
    data: Annotated[
        str,
        typer.Option(help="Dataset root (Ref-YouTube-VOS layout, converted Ref-DAVIS17, MeViS) or a new_<split>.json."),
    ],
    split: Annotated[str | None, typer.Option(help="Split to evaluate (default: valid).")] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Results folder (default: evaluations/<dataset>-<split>); reused when run again."),
    ] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster to join (default: an embedded local Ray).")] = None,
    text_encoder: Annotated[
        str | None, typer.Option(help="Local text encoder folder (default: the one the checkpoint was trained with).")
    ] = None,
    actors: Annotated[int, typer.Option(help="Model replicas in the actor pool.")] = 2,
    gpus_per_actor: Annotated[float, typer.Option(help="GPUs per replica (0: CPU).")] = 0.0,
) -> None:
    """Any checkpoint on any dataset split, without a run: J, F, J&F, P@0.5..0.9 (per annotator on Ref-DAVIS17)
    where the split has masks, else the benchmark's submission zip, checked."""
    from pipelines.evaluate_any import EvaluationRequest, evaluate_checkpoint, results_table
    from pipelines.report import print_table

    if actors < 1 or gpus_per_actor < 0:
        raise UserError(f"--actors must be at least 1 and --gpus-per-actor at least 0 (got {actors}, {gpus_per_actor})")
    folder = out or Path("evaluations") / f"{Path(data.rstrip('/')).name.removesuffix('.json')}-{split or 'valid'}"
    request = EvaluationRequest(checkpoint, data, split, folder, address, text_encoder, actors, gpus_per_actor)
    report = evaluate_checkpoint(request)
    shown = Console()
    print_table(shown, results_table(report))
    shown.print(f"wrote {report.results_file} ({report.seconds:.0f} s)", markup=False, highlight=False, soft_wrap=True)
