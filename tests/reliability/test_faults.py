"""Faults anywhere, nothing lost: one small run is SIGKILLed in every stage and resumed until it finishes.

One `prvos run` process (its own process group) carries six faults (prvos_core.faults), each firing once:
a Ray Train worker killed in epoch 1 of r0-train (Ray Train restores its epoch-0 checkpoint), then the
driver killed in the same epoch; an infer actor killed (a new pool takes what it had not returned), then the
driver killed in r0-infer; the driver killed in r0-refine and in r0-evaluate. After each driver kill, `prvos resume` takes the
dead driver's lock over and continues. The finished run is then compared with uninterrupted runs of the same
stages on the same inputs: train weights within tolerance, every file infer, refine and evaluate wrote
byte-identical. A second `prvos run` on the same run folder during the first is refused. The last tests damage the finished run and
show that `prvos status --verify` names each damaged file and that run/resume re-run only damaged stages.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from pipelines import integrity
from pipelines.pipeline import run_pipeline
from pipelines.run_store import RunStore, stage_plan
from prvos_core.config import config_from_dict
from stages import train
from stages.frames import FramesResult
from stages.text import TextResult
from tests.e2e.test_pipeline import reduced_config
from tests.reliability.conftest import REPO, assert_nothing_half_committed, assert_one_line_error, cli, prvos

# Per train worker: 4 steps an epoch (steps 0-3 epoch 0, 4-7 epoch 1). Infer: each actor's n-th expression.
FAULTS = (
    ("train.step", 6, "kill"),  # a Ray Train worker, mid epoch 1: Ray Train restores epoch 0's checkpoint
    ("train.step", 7, "killdriver"),  # then the driver, in epoch 1 again: resume restores it too
    ("infer.expression", 1, "kill"),  # an infer actor: a new pool takes the expressions not yet returned
    ("infer.expression", 3, "killdriver"),
    ("refine.expression", 1, "killdriver"),
    ("evaluate.expression", 1, "killdriver"),
)
# Where each driver kill leaves the run: the stage that was running has no marker, all before it have one.
KILLED_IN = ("r0-train", "r0-infer", "r0-refine", "r0-evaluate")


@dataclass
class Chain:
    tmp: Path
    config: object
    store: RunStore
    codes: list[int] = field(default_factory=list)
    committed_after: list[set[str]] = field(default_factory=list)
    refused: object = None
    seconds: float = 0.0


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Chain:
    tmp = tmp_path_factory.mktemp("faults")
    raw = reduced_config(tmp)
    raw["train"]["epochs"] = 2  # a checkpoint (epoch 0) to restore when epoch 1 is interrupted
    config_path = tmp / "run.yaml"
    config_path.write_text(json.dumps(raw))
    config = config_from_dict(raw)
    store = RunStore(config.run.root, "killed")
    chain = Chain(tmp, config, store)
    env = {
        **os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PRVOS_FAULT_DIR": str(tmp),
        "PRVOS_FAULT": ",".join(f"{point}:{n}:{mode}" for point, n, mode in FAULTS),
        # Ray Train's controller collects reports (and their checkpoints) when it polls the workers, every 2 s
        # by default: a worker killed sooner after an epoch's report would lose that checkpoint.
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    }  # fmt: skip
    started = time.perf_counter()
    command = [sys.executable, "-m", "pipelines.cli", "run", str(config_path), "--run-id", "killed"]
    for attempt in range(len(KILLED_IN) + 2):
        if attempt:
            command = [sys.executable, "-m", "pipelines.cli", "resume", store.run_dir]
        driver = subprocess.Popen(
            command, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / f"attempt{attempt}.log", "w"),
            start_new_session=True,
        )  # fmt: skip
        if attempt == 0:
            chain.refused = _second_writer(store, driver, config_path)
        try:
            code = driver.wait(timeout=400)
        finally:
            _kill_group(driver.pid)  # whatever the driver started and left behind
        chain.codes.append(code)
        chain.committed_after.append({s for s in stage_plan(config) if store.read_marker(s) is not None})
        if code == 0:
            break
    chain.seconds = time.perf_counter() - started
    return chain


def _second_writer(store: RunStore, driver: subprocess.Popen, config_path: Path):
    """A second `prvos run` on the same run folder while the first driver holds its lock."""
    lock = Path(store.run_dir) / ".lock"
    deadline = time.time() + 120
    while time.time() < deadline and driver.poll() is None:
        try:
            if json.loads(lock.read_text()).get("pid") == driver.pid:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    return prvos("run", config_path, "--run-id", "killed", cwd=config_path.parent, env={"PRVOS_FAULT": ""})


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_every_fault_fired_and_each_driver_kill_was_resumed(chain):
    fired = sorted(p.name for p in chain.tmp.glob("fired-*"))
    assert fired == sorted(f"fired-{point}-{n}" for point, n, _ in FAULTS)
    assert chain.codes == [-signal.SIGKILL] * len(KILLED_IN) + [0], chain.codes
    plan = stage_plan(chain.config)
    for committed, killed in zip(chain.committed_after, KILLED_IN, strict=False):
        assert committed == set(plan[: plan.index(killed)]), (killed, committed)
    assert chain.committed_after[-1] == set(plan)
    assert assert_nothing_half_committed(Path(chain.config.run.root)) == len(plan)
    # Each resume took over the lock the killed driver left.
    assert len(list(Path(chain.store.run_dir).glob(".lock.stale-*"))) == len(KILLED_IN)
    print(f"\nfault chain: {len(FAULTS)} faults, {len(KILLED_IN)} resumes, {chain.seconds:.0f} s")


def test_a_second_writer_is_refused_while_the_driver_runs(chain):
    assert_one_line_error(chain.refused, chain.store.run_dir, "is in use by pid", "wait for it to finish")


def test_train_resumed_from_its_checkpoint_ends_as_an_uninterrupted_run(chain, ray_local):
    store, config = chain.store, chain.config
    marker = store.read_marker("r0-train")
    resumed = train.TrainResult.from_marker(marker.outputs, marker.metrics)
    # After the worker kill Ray Train restored epoch 1's checkpoint: epoch 1 ran once, not again. The resume
    # after the driver kill restored it too.
    first, resumed_log = ((chain.tmp / f"attempt{i}.log").read_text(errors="replace") for i in (0, 1))
    epochs = config.train.epochs
    assert first.count(f"r0 train: epoch 1/{epochs},") == 1
    assert f"r0 train: resumed from the checkpoint of epoch 1/{epochs}" in first  # the worker group restarted
    assert f"r0 train: resumed from the checkpoint of epoch 1/{epochs}" in resumed_log
    assert f"r0 train: epoch 1/{epochs}," not in resumed_log
    text_marker = store.read_marker("text")
    text = TextResult.from_marker(text_marker.outputs, text_marker.metrics)
    inputs = train.TrainInputs(
        manifest_dir=store.stage_dir("ingest"), text_cache=text.cache, text_identity=text.identity,
        text_dim=text.dim, split=config.data.train_split, out_dir=str(chain.tmp / "reference-train"),
        model=config.model, seed=config.run.seed, round_index=0, frame_store=_frame_store(store),
    )  # fmt: skip
    reference = train.run(inputs, config.train)
    assert resumed.loss == pytest.approx(reference.loss, rel=1e-4, abs=1e-6)
    expected = load_file(str(Path(reference.checkpoint) / "model.safetensors"))
    actual = load_file(str(Path(resumed.checkpoint) / "model.safetensors"))
    assert expected.keys() == actual.keys()
    worst = max(float(np.abs(expected[k].astype(np.float64) - actual[k]).max()) for k in expected)
    assert worst <= 1e-5, worst
    print(f"\ntrain: {len(expected)} tensors compared, largest difference {worst:g}")


def _frame_store(store: RunStore) -> str:
    marker = store.read_marker("frames")
    return FramesResult.from_marker(marker.outputs, marker.metrics).store


def test_infer_refine_evaluate_are_byte_identical_to_an_uninterrupted_run(chain, ray_local):
    """The same stages run uninterrupted on the killed run's own committed inputs (a copy of the run without
    them) write exactly the same files."""
    compared = ("r0-infer", "r0-refine", "r0-evaluate")
    reference = RunStore(chain.store.root, "reference")
    shutil.copytree(chain.store.run_dir, reference.run_dir, ignore=shutil.ignore_patterns(".lock*", *compared))
    report = run_pipeline(chain.config, run_id="reference", stages=("infer", "refine", "evaluate"))
    assert report.ran() == list(compared)
    files = 0
    for stage in compared:
        expected, actual = (integrity.results(s.read_marker(stage).files) for s in (reference, chain.store))
        # evaluate's metrics.json holds its duration; its scores are compared below.
        expected.pop("metrics.json", None), actual.pop("metrics.json", None)
        different = sorted(path for path in expected.keys() | actual.keys() if expected.get(path) != actual.get(path))
        assert not different, (stage, different[:5])
        files += len(expected)
    metrics = [store.read_marker("r0-evaluate").metrics for store in (reference, chain.store)]
    assert {k: v for k, v in metrics[0].items() if k != "seconds"} == {
        k: v for k, v in metrics[1].items() if k != "seconds"
    }
    print(f"\nbyte-identical: {files} files of {', '.join(compared)}")


# Last: these damage the finished run.
def test_status_verify_names_every_damaged_file(chain, capsys):
    run_dir = Path(chain.store.run_dir)
    chunk = sorted((run_dir / "r0-infer/pseudo.zarr").glob("*/prob/c/0/0/0"))[0]
    chunk.unlink()  # a Zarr chunk deleted
    refined = sorted((run_dir / "r0-refine/refined.zarr").glob("*/label/c/2/0/0"))[0]
    refined.write_bytes(refined.read_bytes()[:5])  # a Zarr chunk truncated
    weights = run_dir / "r1-train/checkpoint/model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[:-1] + bytes([intact[-1] ^ 0xFF]))  # one byte of a safetensors file flipped
    # Same size, other content, in a file no other stage reads (a re-run stage would read a damaged input).
    scores = run_dir / "r0-evaluate/per_expression.parquet"
    data = scores.read_bytes()
    scores.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    outcome = cli("status", run_dir, "--verify", capsys=capsys)
    assert outcome.code == 1 and "Traceback" not in outcome.err
    damaged = [line for line in outcome.out.splitlines() if line.startswith("damaged: ")]
    expected = {
        f"r0-infer/{chunk.relative_to(run_dir / 'r0-infer').as_posix()}: missing",
        f"r0-refine/{refined.relative_to(run_dir / 'r0-refine').as_posix()}: size 5 (recorded",
        "r1-train/checkpoint/model.safetensors: content changed (hash differs)",
        "r0-evaluate/per_expression.parquet: content changed (hash differs)",
    }
    assert len(damaged) == len(expected), damaged
    for fragment in expected:
        assert any(fragment in line for line in damaged), (fragment, damaged)
    assert "4 damaged file(s) in r0-infer, r0-refine, r1-train, r0-evaluate" in outcome.out
    weights.write_bytes(intact)  # restored, so that the tests below do not retrain


def test_run_checks_sizes_and_resume_checks_hashes_rerunning_only_damaged_stages(chain, ray_local):
    """`prvos run` re-runs the stages with a missing or truncated file (their new bytes equal the old, so
    nothing downstream re-runs); the same-size change in r0-evaluate is found only by resume's hashes."""
    report = run_pipeline(chain.config, run_id="killed")
    assert report.ran() == ["r0-infer", "r0-refine"]
    assert [report.outcomes[s].changed for s in ("r0-infer", "r0-refine")] == [False, False]
    resumed = run_pipeline(chain.config, run_id="killed", verify="hashes")
    assert resumed.ran() == ["r0-evaluate"]
    assert [str(d) for d in resumed.outcomes["r0-evaluate"].repaired] == [
        "r0-evaluate/per_expression.parquet: content changed (hash differs)"
    ]
    assert run_pipeline(chain.config, run_id="killed", verify="hashes").ran() == []
    assert_nothing_half_committed(Path(chain.config.run.root))


def test_markers_without_checksums_still_load(chain, capsys):
    marker = Path(chain.store.marker_uri("text"))
    payload = json.loads(marker.read_text())
    payload.pop("files")
    marker.write_text(json.dumps(payload))
    assert chain.store.read_marker("text").files == {}
    assert integrity.verify("text", chain.store.stage_dir("text"), {}, hashes=True) == []
    outcome = cli("status", chain.store.run_dir, "--verify", capsys=capsys)
    assert outcome.code == 0 and "every recorded file intact" in outcome.out, outcome.out + outcome.err
