"""Starting or joining Ray for a pipeline run.

Joining a cluster (`--address 10.0.0.5:6379`, or `auto` inside a cluster job) ships this checkout's
packages to every node as the job's `py_modules`, so workers run the driver's code even when a node's image
holds another version (the image still has to carry the dependencies: torch, ray, zarr, ...). Stage outputs
are written by workers on any node, so `run.root` must be a path every node sees (a shared filesystem) or an
object store URI (`s3://...`, credentials from each node's environment).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass

import ray

import pipelines
import prvos_core
import stages
from prvos_core import storage

log = logging.getLogger("prvos")


def quiet_ray_train_logs() -> None:
    """Worker set-up hook: keep two Ray Train loggers that its LoggingConfig does not reach out of the console.

    Each report is logged at INFO from a logger named by its file path (not under `ray.train`), and the
    placement-group cleaner warns every few seconds when the State API is absent, as it is on an embedded Ray
    without a dashboard (the cleaner then cannot work; the embedded Ray ends with the driver anyway).
    """
    train_context = os.path.join(os.path.dirname(ray.__file__), "train", "v2", "_internal", "execution", "context.py")
    logging.getLogger(train_context).setLevel(logging.WARNING)
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
    # The cleaner looks its controller up through the State API without an address; with a second Ray on the
    # machine (another user's, another run's) that lookup raises "Found multiple active Ray instances" and its
    # thread dies with a traceback on the console. The worker's own cluster is the one to ask.
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


def code_runtime_env() -> dict:
    """The job's runtime env when joining a cluster: the project's packages, uploaded once per content hash."""
    return {"py_modules": [prvos_core, stages, pipelines], "worker_process_setup_hook": quiet_ray_train_logs}


@dataclass
class _Pending:
    """The Ray a session will start or join when its first stage needs one."""

    address: str | None
    num_cpus: int | None
    shared_paths: tuple[str, ...]
    started: bool = False


_pending: _Pending | None = None


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, shared_paths: Iterable[str] = ()):
    """Join the cluster at `address` ("auto" inside a cluster job), or start an embedded local Ray, when the
    first stage that has work to do calls `ensure_ray` (a run whose stages are all committed starts none);
    shut it down at the end if this session started it.

    shared_paths: local paths that every node must see (the run root, the dataset); a warning names them
    when the cluster has nodes on other machines.
    """
    global _pending
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized() or _pending is not None:
        yield
        return
    _pending = _Pending(address, num_cpus, tuple(shared_paths))
    try:
        yield
    finally:
        started, _pending = _pending.started, None
        if started:
            ray.shutdown()


def ensure_ray() -> None:
    """Start or join the session's Ray now (no-op when Ray is up or no session is open)."""
    if _pending is None or _pending.started or ray.is_initialized():
        return
    kwargs = {"logging_level": logging.WARNING, "log_to_driver": True}
    if _pending.address:
        ray.init(address=_pending.address, runtime_env=code_runtime_env(), **kwargs)
        _warn_unshared(_pending.shared_paths)
    else:
        _configure_embedded_ray()
        runtime_env = {"worker_process_setup_hook": quiet_ray_train_logs}
        ray.init(num_cpus=_pending.num_cpus, include_dashboard=False, runtime_env=runtime_env, **kwargs)
    _pending.started = True


def _configure_embedded_ray() -> None:
    """Settings of an embedded Ray that would otherwise each print a warning on the console of every run; a value
    the user set in the environment is kept.

    - Token authentication, Ray's default for a new local cluster (the token in ~/.ray/auth_token), chosen
      explicitly: left unset, Ray warns on every start that it enabled it. Ray's own helper sets RAY_AUTH_MODE
      for this process and the ones it starts and reloads Ray's config, which read the environment at import.
    - No Ray Train preemption watcher: it watches nodes being drained (spot instances going away), and this Ray
      is one machine that nothing drains. Its actor is created with the worker handles as arguments and
      max_restarts > 0, which makes Ray's core worker log an error line about restarting it (ray#53727).
    """
    if os.environ.get("RAY_ADDRESS"):
        return  # ray.init() joins that cluster instead of starting one: these are the cluster's to choose
    if "RAY_AUTH_MODE" not in os.environ:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def _warn_unshared(paths: Iterable[str]) -> None:
    """Local paths are fine when every node runs on this machine; elsewhere only a shared mount makes them so."""
    here = ray.util.get_node_ip_address()
    elsewhere = sorted({n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} - {here})
    local = [path for path in paths if storage.is_local(path)]
    if elsewhere and local:
        log.warning(
            "%s: local path(s) while nodes %s run on other machines; they must be on a filesystem every node "
            "mounts at the same path, else use s3://... for run.root",
            ", ".join(local),
            ", ".join(elsewhere),
        )
