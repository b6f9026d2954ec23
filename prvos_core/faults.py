"""Fault injection for tests of resume and recovery: fail once at the N-th item of a named point.

Set `PRVOS_FAULT=<point>:<n>:<mode>[,<point>:<n>:<mode>...]` and `PRVOS_FAULT_DIR=<folder>`; the first process
that reaches item n of a listed point fails, and leaves a marker in the folder so that fault fires only once
(a restarted worker or a resumed run then goes through, and meets the next fault of the list).

Points: `train.step` (a Ray Train worker's step), `infer.expression` and `evaluate.expression` (an actor's
n-th call), `refine.expression` (position in a refine task's chunk). Modes:
- `raise`: raise InjectedFault in the process that reached the point;
- `kill`: SIGKILL that process (a Ray Train worker: Ray Train restores its checkpoint; a pool actor: a new pool
  takes the expressions it had not returned);
- `killdriver`: SIGKILL the driver and everything it started. A Ray worker's parent is the raylet, which the
  embedded driver started in the driver's process group, so that group is killed; the driver must therefore
  lead its own process group (`subprocess.Popen(..., start_new_session=True)`). Anywhere else (no raylet
  parent: the driver itself, a cluster worker) it kills only the process that reached the point.
Unset, every call is a dictionary lookup and returns.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

ENV_SPEC = "PRVOS_FAULT"
ENV_DIR = "PRVOS_FAULT_DIR"
MODES = ("raise", "kill", "killdriver")


class InjectedFault(RuntimeError):
    """Raised at an injected fault (mode `raise`)."""


def environment() -> dict[str, str]:
    """The fault variables of this process, to hand to processes it starts (Ray workers)."""
    return {key: os.environ[key] for key in (ENV_SPEC, ENV_DIR) if key in os.environ}


def maybe_fail(point: str, index: int) -> None:
    spec = os.environ.get(ENV_SPEC)
    if not spec:
        return
    for entry in spec.split(","):
        name, _, rest = entry.strip().partition(":")
        at, _, mode = rest.partition(":")
        if name != point or not at.isdigit() or index != int(at):
            continue
        marker = Path(os.environ.get(ENV_DIR, ".")) / f"fired-{point}-{at}"
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            continue
        _fail(point, index, mode)


def _fail(point: str, index: int, mode: str) -> None:
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "killdriver":
        if _parent_is_raylet():
            os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"injected fault at {point} item {index}")


def _parent_is_raylet() -> bool:
    """True in a Ray worker: only then is the parent's process group the driver's, never a test runner's."""
    try:
        return Path(f"/proc/{os.getppid()}/comm").read_text().strip() == "raylet"
    except OSError:
        return False
