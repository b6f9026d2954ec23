"""Ray, for the stages: waiting on tasks (`gather`), the actor pool that runs a checkpoint over expressions, and
where the work ran (`placement.json`).

`gather` is the one place a stage waits on a list of Ray tasks (ingest's file checks, refine's chunks): one
progress bar, results in submission order, user errors unwrapped. The pool does the same for its rows.

The pool (infer: teacher -> pseudo-label store; evaluate: student -> scores or submission masks) maps the
expression ids through a Ray Data actor pool of `cfg.actors` actors, each holding one
`prvos_core.inference.predict.Predictor` built once; every call handles one video's expressions (`work_units`:
the frames are decoded and encoded by the backbone once for all of them) and returns small rows
(big arrays go to storage from inside the actor, never through the object store). When an actor dies, a new
pool takes the units not yet returned (expressions it had committed are written again, to the same bytes); a
pool is shut down once it finishes or fails, so the next stage gets its CPUs.

placement.json: units of work (training clips, expressions) per Ray node, beside the stage's outputs,

```
{"unit": "expressions", "nodes": {"<node id>": {"work": 3, "address": "10.0.0.5"}, ...}}
```
On a cluster this shows that the work was spread (and how unevenly); on one machine it names one node.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.annotations import RayDeprecationWarning

from prvos_core import faults, storage
from prvos_core.config import EvaluateSection, InferSection
from prvos_core.data.manifest import Expression, Video
from prvos_core.errors import UserError, first_line
from prvos_core.progress import progress_bar

if TYPE_CHECKING:
    from prvos_core.inference.predict import VideoFrames, Weights

PLACEMENT_FILE = "placement.json"


@dataclass(frozen=True)
class ModelInputs:
    """What infer and evaluate run: a checkpoint over every expression of a split of the manifest."""

    manifest_dir: str
    text_cache: str
    text_identity: str
    checkpoint: str  # a checkpoint folder (prvos_core.model.checkpoint.save_checkpoint)
    split: str
    out_dir: str
    input_size: tuple[int, int]  # (height, width) the model sees; infer stores labels at this size
    round_index: int | None = None
    frame_store: str | None = None  # the frames stage's frames.zarr (None: decode the JPEGs)


def gather(
    tasks: Iterable[ray.ObjectRef],
    sizes: Sequence[int],
    label: str,
    *,
    unit: str,
    round_index: int | None = None,
    in_flight: int | None = None,
) -> Iterator[Any]:
    """Yield the results of Ray tasks in submission order (so merging them is deterministic), each as soon as
    it and all before it have finished, with a progress bar of `sum(sizes)` units that advances by `sizes[i]`
    when task i finishes.

    tasks: refs, or a generator that submits a task per step: it is advanced only while fewer than `in_flight`
    tasks are pending (None: all at once). A task's user error (a bad file, an inconsistent store) is raised as
    itself, without Ray's wrapping, as soon as it comes back; anything else as Ray raised it.
    """
    submitting = enumerate(tasks)
    position: dict[ray.ObjectRef, int] = {}
    pending: list[ray.ObjectRef] = []
    finished: dict[int, Any] = {}
    next_index = 0
    with progress_bar(label, total=sum(sizes), unit=unit, round_index=round_index) as bar:
        while True:
            while in_flight is None or len(pending) < in_flight:
                index, task = next(submitting, (None, None))
                if task is None:
                    break
                position[task] = index
                pending.append(task)
            if not pending:
                break
            done, pending = ray.wait(pending, num_returns=1)
            index = position.pop(done[0])
            try:
                finished[index] = ray.get(done[0])
            except RayTaskError as error:
                if isinstance(error.cause, UserError):
                    raise error.cause from None
                raise
            bar.update(sizes[index])
            while next_index in finished:
                yield finished.pop(next_index)
                next_index += 1


def current_node() -> str:
    """The Ray node id of the calling worker, actor or driver."""
    return ray.get_runtime_context().get_node_id()


def write_placement(out_dir: str, work_per_node: Mapping[str, float], unit: str) -> str:
    """Write `<out_dir>/placement.json` (work per node with the node's address) and return its URI."""
    addresses = {node["NodeID"]: node.get("NodeManagerAddress", "") for node in ray.nodes()}
    payload = {
        "unit": unit,
        "nodes": {
            node: {"work": work, "address": addresses.get(node, "")} for node, work in sorted(work_per_node.items())
        },
    }
    uri = storage.join(out_dir, PLACEMENT_FILE)
    storage.write_json(uri, payload)
    return uri


def fault_runtime_env() -> dict | None:
    """Hand injected-fault settings (tests of resume) to Ray workers, which do not see later env changes."""
    variables = faults.environment()
    return {"env_vars": variables} if variables else None


class PredictorActor:
    """An actor of the pool: one Predictor in a process set up for it, called by Ray Data with batches of
    expression ids. A subclass names its fault point and turns one expression into rows (`handle`)."""

    fault_point: ClassVar[str]  # prvos_core.faults point, counted per call (tests of resume)

    def __init__(self, inputs: ModelInputs, cfg: InferSection | EvaluateSection, weights: Weights) -> None:
        # Imported here, not at the top: refine's and ingest's task workers import this module too, and torch,
        # the model and Ray Data would add seconds to each of their starts.
        import torch

        from prvos_core.inference.predict import Predictor, choose_device

        # Ray gives each actor cpus_per_actor cores, but torch would start one thread per core of the node:
        # 2 actors x N threads on 2 cores oversubscribe and run slower than 1 thread each.
        torch.set_num_threads(cfg.threads_per_actor)
        # Same checkpoint and inputs -> the same stored bytes, on GPU too (deterministic cuDNN and cuBLAS
        # kernels; cuBLAS reads its workspace setting when CUDA starts, so before the model moves there).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        self.inputs, self.cfg = inputs, cfg
        self.predictor = Predictor(
            inputs.checkpoint, weights, inputs.text_cache, inputs.text_identity, inputs.manifest_dir, inputs.split,
            device=choose_device(cfg.gpus_per_actor), memory_frames=cfg.memory_frames, frame_store=inputs.frame_store,
        )  # fmt: skip
        self.calls = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        """A Ray Data batch of units (expression ids of one video, tab-separated) -> the column batch of their
        rows, each tagged with the node that computed it and its expression's row count (`run_pool` takes the
        tags off). The expressions of a unit share the video's decoded and encoded frames."""
        rows = []
        try:
            for unit in batch[_UNIT]:
                frames = None
                for expression_id in str(unit).split("\t"):
                    faults.maybe_fail(self.fault_point, self.calls)
                    self.calls += 1
                    expression, video = self.predictor.records(expression_id)
                    if frames is None or frames.video_id != video.video_id:
                        frames = self.predictor.frames(video, self.inputs.input_size)
                    own = self.handle(expression, video, frames)
                    assert own, "every expression has at least one frame"
                    rows += [{**row, _COUNT: len(own)} for row in own]
        except UserError as error:
            # Returned, not raised: Ray Data does not shut down a pool whose task failed (its actors would keep
            # their CPUs); `run_pool` raises it in the driver after closing the pool.
            kind = type(error)
            rows = [{_ERROR: first_line(error), _ERROR_TYPE: f"{kind.__module__}:{kind.__qualname__}"}]
        columns = {key: [row[key] for row in rows] for key in rows[0]}
        columns[_NODE] = [current_node()] * len(rows)
        return columns

    def handle(self, expression: Expression, video: Video, frames: VideoFrames) -> list[dict]:
        """One expression's rows; `frames` is the video's, shared with the unit's other expressions."""
        raise NotImplementedError


def work_units(expressions: Iterable[Expression], share_frames: bool) -> list[list[str]]:
    """The pool's units of work: with `share_frames`, the expressions of each video together (its frames are
    decoded and encoded once for all of them); else one expression per unit. Units in expression-id order."""
    units: dict[str, list[str]] = {}
    for expression in sorted(expressions, key=lambda e: e.expression_id):
        key = expression.video_id if share_frames else expression.expression_id
        units.setdefault(key, []).append(expression.expression_id)
    return list(units.values())


_UNIT = "expression_ids"  # the pool's item: one unit's expression ids, tab-separated
_NODE, _COUNT = "_node", "_rows"  # tags an actor adds to each row
_ERROR, _ERROR_TYPE = "_error", "_error_type"  # a user error an actor met, as a row


POOL_RESTARTS = 3  # times a pool whose actor died is started again on the expressions it had not returned


def run_pool(
    actor: type[PredictorActor],
    arguments: tuple,
    units: Sequence[Sequence[str]],
    cfg: InferSection | EvaluateSection,
    *,
    label: str,
    round_index: int | None,
    placement: Counter | None = None,
) -> Iterator[list[dict]]:
    """Yield each expression's rows, expressions in id order, from `actor(*arguments)` on a Ray Data actor pool
    of up to `cfg.actors` actors (one unit of `work_units` per call).

    placement: counts the finished expressions per Ray node. A user error met by an actor is raised here as
    its own class and line, once the pool is shut down. An actor that dies (its process killed, its node lost)
    ends the pool; a new pool takes the units whose expressions had not all come back, up to POOL_RESTARTS
    times. (Ray Data could restart the actor itself, but only with its constructor arguments pinned in the
    object store, which Ray reports on the console as an error line for every actor: ray-project/ray#53727.)
    """
    ids = sorted(expression_id for unit in units for expression_id in unit)
    if not ids:
        return
    _quiet_ray_data()
    position = {expression_id: index for index, expression_id in enumerate(ids)}
    finished: dict[int, list[dict]] = {}
    next_index = 0
    with progress_bar(label, total=len(ids), unit="expr", round_index=round_index) as bar:
        for attempt in range(POOL_RESTARTS + 1):
            left = [unit for unit in units if any(position[e] not in finished and position[e] >= next_index
                                                  for e in unit)]  # fmt: skip
            try:
                for expression_id, rows, node in _pool_rows(actor, arguments, left, cfg):
                    index = position[expression_id]
                    if index < next_index or index in finished:
                        continue  # a retried unit's expression that had already come back
                    finished[index] = rows
                    bar.update(1)
                    if placement is not None:
                        placement[node] += 1
                    while next_index in finished:
                        yield finished.pop(next_index)
                        next_index += 1
                return
            except RayActorError as error:
                if attempt == POOL_RESTARTS:
                    raise
                missing = len(ids) - next_index - len(finished)
                missing_line = f"a new pool takes the {missing} expression(s) not yet done"
                bar.write(f"{bar.desc}: an actor died ({first_line(error)}); {missing_line} "
                          f"(restart {attempt + 1}/{POOL_RESTARTS})", file=sys.stderr)  # fmt: skip


def _pool_rows(
    actor: type[PredictorActor], arguments: tuple, units: Sequence[Sequence[str]], cfg: InferSection | EvaluateSection
) -> Iterator[tuple[str, list[dict], str]]:
    """(expression id, its rows, the node it ran on) as each expression's rows come back from one Ray Data pool
    over `units`; the pool is shut down once it finishes or fails."""
    import ray.data

    items = [{_UNIT: "\t".join(unit)} for unit in units if unit]
    with warnings.catch_warnings():
        # max_restarts has no named parameter in map_batches yet; Ray 2.60 (pinned) takes it as a remote arg
        # and warns that this form goes away in 2.64.
        warnings.simplefilter("ignore", RayDeprecationWarning)
        dataset = ray.data.from_items(items).map_batches(
            actor,
            fn_constructor_args=arguments,
            compute=ray.data.ActorPoolStrategy(size=min(cfg.actors, len(items))),
            num_cpus=cfg.cpus_per_actor,
            num_gpus=cfg.gpus_per_actor,
            batch_size=1,
            batch_format="numpy",
            runtime_env=fault_runtime_env(),
            max_restarts=0,  # run_pool starts a new pool instead
        )
    arrived: dict[str, list[dict]] = {}
    failure = None
    rows = iter(dataset.iter_rows())
    try:
        for row in rows:
            row = {key: _plain(value) for key, value in row.items()}
            if _ERROR in row:
                failure = _user_error(row[_ERROR_TYPE], row[_ERROR])
                break
            node, count = row.pop(_NODE), row.pop(_COUNT)
            own = arrived.setdefault(row["expression_id"], [])
            own.append(row)
            if len(own) == count:
                yield row["expression_id"], arrived.pop(row["expression_id"]), node
    except RayTaskError as error:
        # A problem the user can fix reaches them as its own line, not wrapped in the actor's traceback.
        if not isinstance(error.cause, UserError):
            raise
        failure = error.cause
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
        raise _own_line(failure)


def _quiet_ray_data() -> None:
    """Ray Data's own progress bars and plan printing flood non-terminal logs (the stages show their own);
    a failing actor should surface the original error (a one-line DataError, say), not a wrapper."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    context.raise_original_map_exception = True
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # It warns, once per process, that the bars are off: they are off on purpose.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


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
        error.args = (first_line(error), *error.args[1:])
    return error


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
