"""Running a checkpoint over many expressions on Ray Data: an actor pool of model replicas.

Each actor loads the model and the text cache once, then handles one expression per call and returns one
small row per expression (big arrays go to storage from inside the actor, never through the object store).
Used by the infer stage (teacher -> pseudo-label store) and the evaluate stage (student -> metrics).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import ray
import ray.data

from prvos_core import faults
from prvos_core.progress import progress_bar

log = logging.getLogger("prvos")


def quiet_ray_data() -> None:
    """Ray Data's own progress bars and plan printing flood non-terminal logs; stages show their own."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def run_pool(
    actor: type,
    constructor_kwargs: dict[str, Any],
    expression_ids: list[str],
    *,
    actors: int,
    cpus_per_actor: float,
    gpus_per_actor: float,
    stage: str,
    round_index: int | None,
) -> Iterator[dict[str, Any]]:
    """Yield one result row per expression as the pool finishes them (order not guaranteed)."""
    if not expression_ids:
        return
    quiet_ray_data()
    dataset = ray.data.from_items([{"expression_id": e} for e in expression_ids]).map_batches(
        actor,
        fn_constructor_kwargs=constructor_kwargs,
        compute=ray.data.ActorPoolStrategy(size=min(actors, len(expression_ids))),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,
        batch_size=1,
        batch_format="numpy",
        runtime_env=fault_runtime_env(),
    )
    with progress_bar(stage, total=len(expression_ids), unit="expr", round_index=round_index) as bar:
        for row in dataset.iter_rows():
            bar.update(1)
            yield {key: _plain(value) for key, value in row.items()}


def fault_runtime_env() -> dict | None:
    """Hand injected-fault settings (tests of resume) to Ray workers, which do not see later env changes."""
    variables = faults.environment()
    return {"env_vars": variables} if variables else None


def one_row_batch(handle: Callable[[str], dict[str, Any]], batch: dict[str, np.ndarray]) -> dict[str, list]:
    """Ray Data batch of expression ids -> the batch of their result rows (list-valued columns allowed)."""
    rows = [handle(str(expression_id)) for expression_id in batch["expression_id"]]
    return {key: [row[key] for row in rows] for key in rows[0]}


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
