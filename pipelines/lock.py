"""One writer per run folder: a lock file naming the process that holds it.

A second `prvos run`/`resume` on the same run folder is refused while the holder is alive. A lock left by a
process that died (same host, pid gone or reused by another process) is taken over: the stale file is renamed
away first, so of two processes finding it stale only one takes it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from prvos_core import storage
from prvos_core.errors import StorageError, UserError

LOCK_FILE = ".lock"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (tells a reused pid apart), None if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "unknown"
        return "unknown"


def _alive(holder: dict) -> bool:
    started = _process_start(int(holder.get("pid", -1)))
    return started is not None and (started == "unknown" or started == holder.get("process_start"))


class RunLock:
    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.path = Path(run_dir) / LOCK_FILE
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if not storage.is_local(self.run_dir):
            return  # object stores have no atomic create-if-absent here; one driver per run is the user's rule
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(
                f"{self.run_dir}: cannot create the run folder ({error.strerror or error}); "
                "choose a writable run.root with free space"
            ) from None
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "process_start": _process_start(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        for _ in range(3):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            except OSError as error:
                raise StorageError(
                    f"{self.path}: cannot create the run lock ({error.strerror or error}); "
                    "choose a writable run.root with free space"
                ) from None
            try:
                with os.fdopen(descriptor, "w") as handle:
                    json.dump(me, handle)
            except OSError as error:
                self.path.unlink(missing_ok=True)
                raise StorageError(
                    f"{self.path}: cannot write the run lock ({error.strerror or error}); free some space"
                ) from None
            self.held = True
            return
        raise UserError(f"{self.run_dir}: could not take the run lock {self.path}; try again")

    def _take_over_if_stale(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            holder = {}
        if holder.get("host") not in (None, socket.gethostname()):
            raise UserError(
                f"{self.run_dir} is locked by pid {holder.get('pid')} on {holder['host']} since {holder.get('since')}; "
                f"if that process is gone, delete {self.path}"
            )
        if holder and _alive(holder):
            raise UserError(
                f"{self.run_dir} is in use by pid {holder['pid']} (since {holder.get('since')}); "
                "wait for it to finish or stop it, then resume"
            )
        try:
            os.rename(self.path, self.path.with_name(f"{LOCK_FILE}.stale-{holder.get('pid', 'unknown')}-{os.getpid()}"))
        except FileNotFoundError:
            pass  # another process took it over first; the next attempt sees its lock

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def lock_holder(run_dir: str) -> dict | None:
    """The live holder of a run's lock, or None."""
    path = Path(run_dir) / LOCK_FILE
    try:
        holder = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return holder if holder.get("host") == socket.gethostname() and _alive(holder) else None
