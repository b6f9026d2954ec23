"""A reduced pipeline through `prvos run --address` on a two-node Ray cluster, the run store on S3.

The nodes have one CPU each, so the two training workers and the two actors of each pool are forced onto
different nodes; every stage's `placement.json` says which node did how much, and the test checks that both
cluster nodes appear and that every artifact (markers, checkpoints, Zarr stores, MLflow artifacts) is on S3.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from prvos_core import storage
from tests.cluster.conftest import BUCKET
from tests.e2e.test_pipeline import reduced_config

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_pipeline_on_two_nodes_with_the_run_store_on_s3(ray_cluster, s3_env, tmp_path):
    raw = reduced_config(tmp_path, name="cluster")
    raw["run"]["root"] = root = f"s3://{BUCKET}/runs"
    config_path = tmp_path / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    started = time.perf_counter()
    # The driver runs where a user would launch it: its own process, joining the cluster by address.
    driver = subprocess.run(
        [str(Path(sys.executable).parent / "prvos"), "run", str(config_path), "--run-id", "two-nodes",
         "--address", ray_cluster.address],
        cwd=tmp_path, env=ray_cluster.env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    wall = time.perf_counter() - started
    assert driver.returncode == 0, driver.stderr[-4000:]
    assert "tracking in" in driver.stderr, "the driver says where MLflow tracking went"

    run_dir = storage.join(root, "two-nodes")
    from pipelines.run_store import stage_plan
    from prvos_core.config import config_from_dict

    plan = stage_plan(config_from_dict(raw))
    markers = {name: storage.read_json(storage.join(run_dir, name, "_COMMITTED.json")) for name in plan}

    work: dict[str, Counter] = {}
    units: dict[str, str] = {}
    for name, marker in markers.items():
        if "placement" in marker["outputs"]:
            placement = storage.read_json(marker["outputs"]["placement"])
            work[name] = Counter({node: entry["work"] for node, entry in placement["nodes"].items()})
            units[name] = placement["unit"]
    cluster = set(ray_cluster.node_ids)
    assert set(work["r0-train"]) == cluster, "one training worker per node"
    assert all(set(counts) <= cluster for counts in work.values())
    assert set().union(*(set(work[name]) for name in work if "train" not in name)) == cluster, "actors on both nodes"

    # The driver shipped the project's packages: each node unpacked them for its workers.
    for folder in (ray_cluster.head_dir, ray_cluster.worker_dir):
        unpacked = {p.name for p in Path(folder).glob("session_*/runtime_resources/py_modules_files/*/*")}
        assert {"prvos_core", "stages", "pipelines"} <= unpacked, (folder, unpacked)

    fs, path = storage.filesystem(run_dir)
    objects = fs.find(path, detail=True)
    for stage, suffix in (("r0-infer", "pseudo.zarr/zarr.json"), ("text", "cache.zarr/zarr.json"),
                          ("r1-train", "checkpoint/model.safetensors"), ("r0-refine", "refined.zarr/zarr.json")):  # fmt: skip
        assert f"{path}/{stage}/{suffix}" in objects, (stage, suffix)
    artifacts = fs.find(f"{BUCKET}/runs/mlartifacts")
    assert any(name.endswith("summary.json") for name in artifacts), "MLflow artifacts on S3"
    assert (tmp_path / "mlflow.db").is_file(), "an s3 run root without a server tracks in ./mlflow.db"

    status = subprocess.run(
        [str(Path(sys.executable).parent / "prvos"), "status", run_dir],
        cwd=tmp_path, env=ray_cluster.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr[-2000:]
    assert status.stdout.count("committed") == len(plan), status.stdout

    by_stage = Counter(name[len(path) + 1 :].split("/", 1)[0] for name in objects)
    print(
        f"\ntwo-node run: {wall:.1f} s wall; S3 objects {len(objects)} "
        f"({sum(o['size'] for o in objects.values()) / 1e6:.2f} MB, + {len(artifacts)} MLflow artifacts); "
        f"per stage {dict(sorted(by_stage.items()))}"
    )
    for name, counts in work.items():
        seconds = markers[name]["metrics"].get("seconds", 0.0)
        shares = ", ".join(f"{node[:8]}: {count:g}" for node, count in sorted(counts.items()))
        print(f"  {name:12s} {seconds:6.1f} s  {units[name]} per node: {shares}")
