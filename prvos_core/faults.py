"""Fault injection for tests of resume and recovery: fail once at the N-th item of a named point.

Set `PRVOS_FAULT=<point>:<n>:<mode>` (mode `raise` or `kill`) and `PRVOS_FAULT_DIR=<folder>`; the first
process that reaches item n of that point fails, and leaves a marker in the folder so it fires only once
(a restarted worker or a resumed run then goes through). Points: `train.step`, `infer.expression`,
`refine.expression`, `evaluate.expression`. Unset, every call is a dictionary lookup and returns.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

ENV_SPEC = "PRVOS_FAULT"
ENV_DIR = "PRVOS_FAULT_DIR"


class InjectedFault(RuntimeError):
    """Raised at an injected fault (mode `raise`)."""


def environment() -> dict[str, str]:
    """The fault variables of this process, to hand to processes it starts (Ray workers)."""
    return {key: os.environ[key] for key in (ENV_SPEC, ENV_DIR) if key in os.environ}


def maybe_fail(point: str, index: int) -> None:
    spec = os.environ.get(ENV_SPEC)
    if not spec:
        return
    name, _, rest = spec.partition(":")
    at, _, mode = rest.partition(":")
    if name != point or not at.isdigit() or index != int(at):
        return
    marker = Path(os.environ.get(ENV_DIR, ".")) / f"fired-{point}-{at}"
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"injected fault at {point} item {index}")
