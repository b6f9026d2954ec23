"""The run lock of a run folder on s3:// (moto on 127.0.0.1): a lease object written with conditional puts,
renewed while its driver runs, refusing a second driver while live and taken over once it lapses."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from pipelines.lock import LOCK_FILE, RunLock, lock_holder, read_lease
from prvos_core import storage
from prvos_core.errors import UserError
from tests.cluster.conftest import BUCKET

HOLD = """
import sys, time
from pipelines.lock import RunLock
lock = RunLock(sys.argv[1], lease_seconds=float(sys.argv[2])); lock.acquire(); print("held", flush=True); time.sleep(60)
"""


@pytest.fixture
def run_dir(s3_env) -> str:
    return f"s3://{BUCKET}/locks-{uuid.uuid4().hex[:8]}/run-1"


def test_a_second_driver_is_refused_while_the_lease_is_live_and_a_dead_ones_is_taken(run_dir):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, run_dir, "1.5"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        time.sleep(2.5)  # past the lease's length: only its renewals keep it live
        with pytest.raises(UserError) as refused:
            RunLock(run_dir).acquire()
        message = str(refused.value)
        assert message.startswith(f"{run_dir} is in use by pid {holder.pid} on {socket.gethostname()} (run run-1, ")
        assert message.endswith("wait for it to finish, or stop that driver and resume once its lease has lapsed")
        assert "\n" not in message
        assert lock_holder(run_dir)["pid"] == holder.pid
        assert read_lease(run_dir).age < 1.5
    finally:
        holder.kill()
        holder.wait()
    # Its driver is gone from this host: the lease is taken over at once, without waiting for it to lapse.
    started = time.perf_counter()
    with RunLock(run_dir) as lock:
        assert lock.held and time.perf_counter() - started < 1.0
        assert read_lease(run_dir).holder["pid"] == lock_holder(run_dir)["pid"] != holder.pid
    assert read_lease(run_dir) is None and lock_holder(run_dir) is None  # released: the lease object is gone


def test_a_lapsed_lease_of_another_host_is_taken_over(run_dir, caplog):
    other = {"host": "node-7", "pid": 4242, "run": "run-1", "since": "2026-01-01 00:00:00 UTC", "lease_seconds": 1}
    storage.write_bytes(storage.join(run_dir, LOCK_FILE), json.dumps(other).encode())
    with pytest.raises(UserError, match=r"is in use by pid 4242 on node-7 \(run run-1, "):
        RunLock(run_dir).acquire()
    time.sleep(2.2)  # the store dates objects to the second
    with RunLock(run_dir, lease_seconds=30) as lock:
        assert lock.held
        lease = read_lease(run_dir)
        assert lease.holder["host"] == socket.gethostname() and lease.holder["lease_seconds"] == 30
        assert set(lease.holder) >= {"pid", "run", "since", "renewed", "expires", "token"}
    assert "took over the run lock of pid 4242 on node-7" in caplog.text


def test_of_two_drivers_racing_for_a_free_run_exactly_one_wins(run_dir):
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def driver() -> None:
        lock = RunLock(run_dir)
        barrier.wait()
        try:
            lock.acquire()
            outcomes.append(lock)
        except UserError as error:
            outcomes.append(error)

    threads = [threading.Thread(target=driver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [outcome for outcome in outcomes if isinstance(outcome, RunLock)]
    losers = [outcome for outcome in outcomes if isinstance(outcome, UserError)]
    assert len(winners) == 1 and len(losers) == 1
    assert "is in use by pid" in str(losers[0])
    winners[0].release()
    assert read_lease(run_dir) is None
