"""Starting or joining Ray for a pipeline run."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

import ray


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None):
    """Join the cluster at `address` ("auto" inside a cluster job), or start an embedded local Ray."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        yield
        return
    kwargs = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()
