"""The run lock: a live holder refuses a second writer, a dead holder's lock is taken over."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from pipelines.lock import LOCK_FILE, RunLock, lock_holder
from prvos_core.errors import UserError

HOLD = """
import sys, time
from pipelines.lock import RunLock
lock = RunLock(sys.argv[1]); lock.acquire(); print("held", flush=True); time.sleep(60)
"""


def _holder(run_dir) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_second_writer_is_refused_while_the_first_lives(tmp_path):
    process = _holder(tmp_path)
    try:
        with pytest.raises(UserError, match=f"in use by pid {process.pid}"):
            RunLock(str(tmp_path)).acquire()
        assert lock_holder(str(tmp_path))["pid"] == process.pid
    finally:
        process.kill()
        process.wait()


def test_a_dead_holders_lock_is_taken_over(tmp_path):
    process = _holder(tmp_path)
    process.kill()
    process.wait()
    assert lock_holder(str(tmp_path)) is None
    with RunLock(str(tmp_path)) as lock:
        assert lock.held
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] != process.pid
    assert not (tmp_path / LOCK_FILE).exists()
    assert list(tmp_path.glob(f"{LOCK_FILE}.stale-{process.pid}-*"))


def test_a_reused_pid_is_not_mistaken_for_the_holder(tmp_path):
    import os

    (tmp_path / LOCK_FILE).write_text(
        json.dumps({"pid": os.getpid(), "host": __import__("socket").gethostname(), "process_start": "1", "since": "x"})
    )
    started = time.perf_counter()
    with RunLock(str(tmp_path)) as lock:
        assert lock.held
    assert time.perf_counter() - started < 5


def test_an_object_store_without_conditional_writes_gets_no_lock_and_says_so(caplog):
    import fsspec

    run_dir = "memory://runs/run-1"
    with RunLock(run_dir) as lock:
        assert not lock.held
    assert lock_holder(run_dir) is None
    assert not fsspec.filesystem("memory").exists("/runs/run-1")
    assert "memory://runs/run-1: no run lock on this object store (only s3:// has one); run one driver per run" in (
        caplog.text
    )
