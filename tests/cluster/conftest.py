"""Servers the cluster tests start on 127.0.0.1 and stop themselves: an S3-compatible server (moto) and a
two-node Ray cluster (a head and a worker node, each `ray start --block` in its own process group and temp
dir). Only processes these fixtures started are stopped: `ray stop` would stop every Ray on the machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
BUCKET = "prvos-test"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_groups(processes: list[subprocess.Popen], grace: float = 10.0) -> None:
    """SIGTERM to the process groups we started (each process leads its own), SIGKILL to what is left of
    them after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        alive = [process for process in processes if _group_alive(process.pid)]
        for process in alive:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while time.time() < deadline and any(_group_alive(process.pid) for process in alive):
            for process in alive:
                process.poll()  # reaps the leader, so it does not linger as a zombie
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(_pgid(pid) == pgid and not _zombie(pid) for pid in _pids())


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def kill_leftovers(marker: str) -> None:
    """SIGKILL processes whose command line names `marker` (a temp dir only our cluster uses): Ray workers
    that left our process groups."""
    me = os.getpid()
    for pid in _pids():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pid != me and marker in command:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server on a free 127.0.0.1 port with one bucket; yields the AWS_* environment for it."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as sink:
        server = subprocess.Popen(
            [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        _wait_http(f"{env['AWS_ENDPOINT_URL']}/moto-api/", server, log)
        request = urllib.request.Request(f"{env['AWS_ENDPOINT_URL']}/{BUCKET}", method="PUT")
        urllib.request.urlopen(request, timeout=10).close()
        yield env
    finally:
        stop_groups([server], grace=5.0)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This test process talks to the local S3 server (fsspec instances are cached per settings: cleared)."""
    import fsspec

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    fsspec.AbstractFileSystem.clear_instance_cache()
    yield s3_server
    fsspec.AbstractFileSystem.clear_instance_cache()


def _wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"moto_server did not answer at {url} within {timeout} s")


class RayNodes:
    """A head node and a worker node started with `ray start --block` on 127.0.0.1, one CPU each."""

    def __init__(self, env: dict[str, str]) -> None:
        # Short paths: Ray's Unix socket paths under the temp dir must stay below 108 characters.
        self.head_dir = tempfile.mkdtemp(prefix="prvc-h-", dir="/tmp")
        self.worker_dir = tempfile.mkdtemp(prefix="prvc-w-", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = env
        self.processes: list[subprocess.Popen] = []
        self.node_ids: list[str] = []

    def start(self) -> None:
        common = ["--block", "--num-cpus=1", "--memory=2500000000", "--object-store-memory=100000000",
                  "--disable-usage-stats", "--node-ip-address=127.0.0.1"]  # fmt: skip
        head = [
            "--head", f"--port={self.port}", "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}", '--resources={"prvos_head": 1}',
        ]  # fmt: skip
        self._start("head", [*head, *common, *self._ports()], self.head_dir)
        # The head writes the cluster's address once its GCS is up; the worker node can join from then on.
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(self.head_dir, "ray_current_cluster")):
            if time.time() > deadline or self.processes[0].poll() is not None:
                raise RuntimeError(f"the Ray head did not start: {self._log('head')}")
            time.sleep(0.3)
        worker = [f"--address={self.address}", '--resources={"prvos_worker": 1}']
        self._start("worker", [*worker, *common, *self._ports()], self.worker_dir)
        self._wait_for_nodes(2)

    def stop(self) -> None:
        stop_groups(self.processes)
        for folder in (self.head_dir, self.worker_dir):
            kill_leftovers(folder)
            shutil.rmtree(folder, ignore_errors=True)

    def _ports(self) -> list[str]:
        # Fixed default ports (52365 and others) collide with other Ray instances on this machine.
        return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]  # fmt: skip

    def _start(self, name: str, arguments: list[str], temp_dir: str) -> None:
        log = open(os.path.join(temp_dir, f"{name}.log"), "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [str(VENV_BIN / "ray"), "start", *arguments, f"--temp-dir={temp_dir}"],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
        )  # fmt: skip
        self.processes.append(process)

    def _log(self, name: str) -> str:
        folder = self.head_dir if name == "head" else self.worker_dir
        return Path(folder, f"{name}.log").read_text(errors="replace")[-1500:]

    def _wait_for_nodes(self, count: int, timeout: float = 120.0) -> None:
        """Poll the cluster from a separate driver process until `count` nodes are alive."""
        probe = (
            "import json, ray, time\n"
            f"ray.init(address={self.address!r}, logging_level='ERROR', log_to_driver=False)\n"
            f"deadline = time.time() + {timeout}\n"
            f"while sum(n['Alive'] for n in ray.nodes()) < {count} and time.time() < deadline:\n"
            "    time.sleep(0.5)\n"
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))\n"
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(process.poll() is not None for process in self.processes):
                break
            done = subprocess.run([sys.executable, "-c", probe], env=self.env, capture_output=True, text=True,
                                  timeout=timeout)  # fmt: skip
            if done.returncode == 0:
                self.node_ids = json.loads(done.stdout.strip().splitlines()[-1])
                if len(self.node_ids) >= count:
                    return
            time.sleep(1.0)
        raise RuntimeError(f"the Ray cluster did not reach {count} nodes: {self._log('head')} {self._log('worker')}")


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """Two Ray nodes on 127.0.0.1 whose workers see the local S3 server; stopped (only them) at the end."""
    env = {
        **os.environ,
        **s3_server,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    nodes = RayNodes(env)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()
