"""Running a checkpoint over many expressions on Ray Data: an actor pool of model replicas.

Infer (teacher -> pseudo-label store) and evaluate (student -> scores or submission masks) both map a dataset
of expression ids through a pool of actors. Each actor holds one `ModelReplica` (the model, the text cache in
memory and the manifest's records), built once, and handles one expression per call; what it returns are
small rows (big arrays go to storage from inside the actor, never through the object store).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import ray.data
import ray.exceptions
import torch

from prvos_core import faults
from prvos_core.config import EvaluateSection, InferSection
from prvos_core.data.manifest import Expression, Manifest, Video, read_manifest
from prvos_core.errors import DataError, UserError
from prvos_core.inference.predict import Weights, choose_device, load_predictor, predict_expression
from prvos_core.model.checkpoint import read_checkpoint_meta
from prvos_core.progress import progress_bar
from prvos_core.text.cache import TextCache, TextNotCachedError
from stages.placement import current_node

NODE_COLUMN = "_node"
ERROR_COLUMN, ERROR_TYPE_COLUMN = "_error", "_error_type"  # a user error an actor met, as a row


@dataclass(frozen=True)
class ModelInputs:
    """What infer and evaluate run: a checkpoint over every expression of a split of the manifest."""

    manifest_dir: str
    text_cache: str
    text_identity: str
    checkpoint: str  # a checkpoint folder (prvos_core.model.save_checkpoint)
    split: str
    out_dir: str
    input_size: tuple[int, int]  # (height, width) the model sees; infer stores labels at this size
    fingerprint: str = ""
    round_index: int | None = None


def configure_ray_data() -> None:
    """Ray Data's own progress bars and plan printing flood non-terminal logs (the stages show their own);
    a failing actor should surface the original error (a one-line DataError, say), not a wrapper."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    context.raise_original_map_exception = True
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # It warns, once per process, that the bars are off: they are off on purpose.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def prepare(inputs: ModelInputs) -> tuple[Manifest, list[Expression]]:
    """The checks both model stages make in the driver before any actor starts, each failing in one line:
    the split has expressions, the checkpoint is a checkpoint, every expression's text is cached."""
    manifest = read_manifest(inputs.manifest_dir)
    expressions = manifest.split_expressions(inputs.split)
    if not expressions:
        raise DataError(f"split {inputs.split!r} has no expressions in the manifest {inputs.manifest_dir}")
    read_checkpoint_meta(inputs.checkpoint)
    check_texts_cached(inputs.text_cache, inputs.text_identity, expressions)
    return manifest, expressions


def check_texts_cached(text_cache: str, text_identity: str, expressions: list[Expression]) -> None:
    """Fail in the driver, in one line, before any actor starts, when an expression's text has no cache row."""
    cache = TextCache(text_cache, text_identity)
    missing = sorted({e.text for e in expressions if e.text not in cache})
    if missing:
        raise TextNotCachedError(missing[0], len(missing), cache.location)


def run_pool(
    actor: type,
    constructor_kwargs: dict[str, Any],
    rows_per_expression: Mapping[str, int],
    cfg: InferSection | EvaluateSection,
    *,
    stage: str,
    round_index: int | None,
    placement: Counter | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the rows the actors return, as they finish (order not guaranteed).

    rows_per_expression: expression id -> how many rows its call returns; an expression counts as done for
    the progress bar once all of them arrived. placement: counts the finished expressions per Ray node.
    """
    if not rows_per_expression:
        return
    configure_ray_data()
    ids = sorted(rows_per_expression)
    dataset = ray.data.from_items([{"expression_id": e} for e in ids]).map_batches(
        actor,
        fn_constructor_kwargs=constructor_kwargs,
        compute=ray.data.ActorPoolStrategy(size=min(cfg.actors, len(ids))),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.gpus_per_actor,
        batch_size=1,
        batch_format="numpy",
        runtime_env=fault_runtime_env(),
    )
    arrived = dict.fromkeys(ids, 0)
    failure: UserError | None = None
    with progress_bar(stage, total=len(ids), unit="expr", round_index=round_index) as bar:
        rows = iter(dataset.iter_rows())
        try:
            for row in rows:
                row = {key: _plain(value) for key, value in row.items()}
                if ERROR_COLUMN in row:
                    failure = _user_error(row[ERROR_TYPE_COLUMN], row[ERROR_COLUMN])
                    break
                node = row.pop(NODE_COLUMN)
                arrived[row["expression_id"]] += 1
                if arrived[row["expression_id"]] == rows_per_expression[row["expression_id"]]:
                    bar.update(1)
                    if placement is not None:
                        placement[node] += 1
                yield row
        except ray.exceptions.RayTaskError as error:
            # A problem the user can fix (a frame gone since ingest, say) reaches them as its own line, not
            # wrapped in the actor's traceback; it is raised below, once the pool is gone.
            if not isinstance(error.cause, UserError):
                raise
            failure = _own_line(error.cause)
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()
            # A pool that failed or was left early is not shut down by Ray Data (its executor thread keeps
            # running until the Dataset is garbage, which a traceback can postpone indefinitely): its idle
            # actors kept their CPUs and the next stage's Ray Train workers waited for them forever. Ray Data
            # keeps the running executor on the Dataset (private, hence the getattr); stop it now.
            executor = getattr(dataset, "_current_executor", None)
            if executor is not None:
                executor.shutdown(force=True)
    if failure is not None:
        raise failure


def fault_runtime_env() -> dict | None:
    """Hand injected-fault settings (tests of resume) to Ray workers, which do not see later env changes."""
    variables = faults.environment()
    return {"env_vars": variables} if variables else None


class ModelReplica:
    """What each actor of a pool holds: one model, the text cache in memory and the manifest's records."""

    def __init__(
        self,
        manifest_dir: str,
        split: str,
        text_cache: str,
        text_identity: str,
        checkpoint: str,
        weights: Weights,
        cfg: InferSection | EvaluateSection,
    ) -> None:
        # Ray gives each actor cpus_per_actor cores, but torch would start one thread per core of the node:
        # 2 actors x N threads on 2 cores oversubscribe and run slower than 1 thread each.
        torch.set_num_threads(cfg.threads_per_actor)
        # Same checkpoint and inputs -> the same stored bytes, on GPU too (deterministic cuDNN and cuBLAS
        # kernels; cuBLAS reads its workspace setting when CUDA starts, so before the model moves there).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        self.cfg = cfg
        self.model = load_predictor(checkpoint, weights, choose_device(cfg.gpus_per_actor))
        self.text = TextCache(text_cache, text_identity).load_all()
        manifest = read_manifest(manifest_dir)
        self.expressions = {e.expression_id: e for e in manifest.split_expressions(split)}
        self.videos = {(v.split, v.video_id): v for v in manifest.videos}
        self.calls = 0

    def records(self, expression_id: str, fault_point: str) -> tuple[Expression, Video]:
        """The expression and its video; counts the call for injected faults (tests of resume)."""
        faults.maybe_fail(fault_point, self.calls)
        self.calls += 1
        expression = self.expressions[expression_id]
        return expression, self.videos[(expression.split, expression.video_id)]

    def predict(
        self, expression: Expression, video: Video, input_size: tuple[int, int], *, first_mask_from_gt: bool
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(frame index, probability (h, w) float32 at `input_size`) for every frame of the video."""
        words, word_mask = self.text.lookup([expression.text])
        return predict_expression(
            self.model,
            video,
            expression,
            words[0],
            word_mask[0],
            input_size,
            first_mask_from_gt=first_mask_from_gt,
            memory_frames=self.cfg.memory_frames,
        )


def rows_batch(handle: Callable[[str], list[dict[str, Any]]], batch: dict[str, np.ndarray]) -> dict[str, list]:
    """Ray Data batch of expression ids -> the column batch of the rows `handle` returns for each of them,
    each tagged with the node that computed it (`run_pool` takes the tag off)."""
    try:
        rows = [row for expression_id in batch["expression_id"] for row in handle(str(expression_id))]
    except UserError as error:
        # Returned, not raised: Ray Data does not shut down a pool whose task failed (its actors would keep
        # their CPUs); `run_pool` raises it in the driver after closing the pool.
        kind = type(error)
        return {"expression_id": [str(batch["expression_id"][0])], ERROR_COLUMN: [str(error).split("\n", 1)[0]],
                ERROR_TYPE_COLUMN: [f"{kind.__module__}:{kind.__qualname__}"], NODE_COLUMN: [current_node()]}  # fmt: skip
    assert rows, "every expression has at least one frame"
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    columns[NODE_COLUMN] = [current_node()] * len(rows)
    return columns


def _user_error(kind: str, message: str) -> UserError:
    """The user error an actor returned, as the same exception class (its one-line message, no __init__)."""
    module, _, name = kind.partition(":")
    cls = getattr(importlib.import_module(module), name, UserError)
    if not (isinstance(cls, type) and issubclass(cls, UserError)):
        cls = UserError
    error = cls.__new__(cls)
    error.args = (message,)
    return error


def _own_line(error: UserError) -> UserError:
    """A user error's message is one line; Ray Data appends retry advice to it, which is dropped here."""
    if error.args and isinstance(error.args[0], str):
        error.args = (error.args[0].split("\n", 1)[0], *error.args[1:])
    return error


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
