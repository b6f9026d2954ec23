"""MLflow lineage of a pipeline run: one parent run, a nested run per round and per stage.

A stage run holds the stage's resolved config section as params, its metrics, its fingerprint and artifact
URIs as tags, and its small JSON summaries as artifacts; big arrays stay in Zarr and are referenced by URI.
The manifest is logged as the parent run's input dataset. The ids of the parent and round runs are kept in
`<run>/mlflow.json`, so `prvos resume` adds to the same runs instead of starting new ones.

Tracking store: `--tracking-uri`, else `MLFLOW_TRACKING_URI`, else SQLite under a local run root
(`<run.root>/mlflow.db`). A SQLite file cannot live on an object store, so for an `s3://` run root without a
server the database is `./mlflow.db` on the driver's machine (a warning says so); on a cluster, point
`--tracking-uri` at an MLflow server. Artifacts go to `<run.root>/mlartifacts` either way (S3 through boto3,
endpoint and credentials from the AWS_* environment variables).

The only module of `pipelines` that touches MLflow (a test says so): `prvos inspect` logs its report through
`log_report`, and `prvos ui` serves the run store's database with `ui_command`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from pipelines.run_store import RunStore, split_stage
from prvos_core import storage
from prvos_core.config import PrvosConfig
from prvos_core.errors import StorageError, UserError, first_line
from stages.ingest import IngestResult
from stages.result import StageResult
from stages.train import TrainResult

log = logging.getLogger("prvos")

STATE_FILE = "mlflow.json"
DATABASE_FILE = "mlflow.db"
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")
_SMALL_ARTIFACT_BYTES = 1 << 20


def default_tracking_uri(run_root: str) -> str:
    """MLFLOW_TRACKING_URI when set; else SQLite under a local run root, or `./mlflow.db` for a remote one."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if storage.is_local(run_root):
        return f"sqlite:///{os.path.abspath(os.path.join(run_root, DATABASE_FILE))}"
    database = os.path.abspath(DATABASE_FILE)
    log.warning(
        "lineage: run.root %s is remote and no MLflow server is given: tracking in %s on this machine "
        "(artifacts under %s); pass --tracking-uri or set MLFLOW_TRACKING_URI to share it",
        run_root,
        database,
        storage.join(run_root, "mlartifacts"),
    )
    return f"sqlite:///{database}"


def metric_name(name: str) -> str:
    """MLflow accepts letters, digits, '_', '-', '.', ' ' and '/' in metric names."""
    return _UNSAFE.sub("_", name)


def flatten(section: Any, prefix: str = "") -> dict[str, str]:
    """Nested config data -> {'train.lr': '0.0001', ...} (MLflow params are strings of <= 6000 chars)."""
    if isinstance(section, dict):
        items: dict[str, str] = {}
        for key, value in section.items():
            items.update(flatten(value, f"{prefix}{key}."))
        return items
    return {prefix.rstrip("."): str(section)[:6000]}


class Lineage:
    """Records a pipeline run in MLflow; use as a context manager around the stages."""

    def __init__(self, store: RunStore, config: PrvosConfig, tracking_uri: str | None = None) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        self.store, self.config = store, config
        self.tracking_uri = tracking_uri or default_tracking_uri(config.run.root)
        self.client = MlflowClient(self.tracking_uri)
        self.state_uri = storage.join(store.run_dir, STATE_FILE)
        self.state = storage.read_json(self.state_uri) if storage.exists(self.state_uri) else {}
        if self.state.get("tracking_uri") not in (None, self.tracking_uri):
            log.info("lineage: this run was tracked at %s; continuing there", self.state["tracking_uri"])
            self.tracking_uri = self.state["tracking_uri"]
            self.client = MlflowClient(self.tracking_uri)
        self.experiment_id = self._experiment()
        self.parent_id = self._parent()

    # --- context --------------------------------------------------------------------------------------------

    def __enter__(self) -> Lineage:
        self.client.update_run(self.parent_id, status="RUNNING")
        return self

    def __exit__(self, kind, error, traceback) -> None:
        status = "FINISHED" if kind is None else ("KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")
        for run_id in [*self.state.get("rounds", {}).values(), self.parent_id]:
            self.client.set_terminated(run_id, status=status)

    # --- records --------------------------------------------------------------------------------------------

    def stage_finished(
        self, name: str, round_index: int | None, section: dict, result: StageResult, fingerprint: str
    ) -> None:
        """One nested run for a stage that ran: params, metrics, fingerprint and artifact URIs, summaries."""
        from mlflow.entities import Metric, Param

        outputs, measured = result.to_marker()
        parent = self.parent_id if round_index is None else self._round(round_index)
        tags = {"mlflow.parentRunId": parent, "prvos.stage": name, "prvos.fingerprint": fingerprint}
        tags.update({f"prvos.output.{key}": uri for key, uri in outputs.items()})
        if round_index is not None:
            tags["prvos.round"] = str(round_index)
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        params = [Param(key, value) for key, value in flatten(section).items()]
        metrics = [Metric(metric_name(key), value, 0, 0) for key, value in measured.items()]
        self.client.log_batch(run.info.run_id, metrics=metrics, params=params)
        if isinstance(result, TrainResult):
            self._log_history(run.info.run_id, result.history)
        for uri in outputs.values():
            self._log_small_artifact(run.info.run_id, uri)
        self.client.set_terminated(run.info.run_id, status="FINISHED")
        if round_index is not None:
            summary = [Metric(metric_name(f"{split_stage(name)[1]}.{k}"), v, 0, 0) for k, v in measured.items()]
            self.client.log_batch(self._round(round_index), metrics=summary)

    def log_manifest(self, manifest: IngestResult) -> None:
        """The expressions table as the parent run's input dataset (once per run)."""
        if self.state.get("manifest_logged"):
            return
        import mlflow

        from prvos_core.data.manifest import read_manifest

        frame = _expressions_frame(read_manifest(manifest.manifest_dir))
        with warnings.catch_warnings():  # mlflow's schema hints about integer columns and local sources
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(frame, source=manifest.expressions_table, name="manifest.expressions")
            # The fluent API needs the process-wide tracking URI, and set_tracking_uri also exports it as
            # MLFLOW_TRACKING_URI, which default_tracking_uri would then hand to every later run of this process
            # (a long-lived driver, the tests): restore both afterwards.
            exported, before = os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri()
            mlflow.set_tracking_uri(self.tracking_uri)
            try:
                with mlflow.start_run(run_id=self.parent_id):
                    mlflow.log_input(dataset, context="ingest")
            finally:
                mlflow.set_tracking_uri(before)
                if exported is None:
                    os.environ.pop("MLFLOW_TRACKING_URI", None)
                else:
                    os.environ["MLFLOW_TRACKING_URI"] = exported
        self.client.update_run(self.parent_id, status="RUNNING")
        self.state["manifest_logged"] = True
        self._save()

    # --- helpers --------------------------------------------------------------------------------------------

    def _experiment(self) -> str:
        name = f"prvos/{self.config.name}"
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        root = self.config.run.root
        artifacts = storage.join(os.path.abspath(root) if storage.is_local(root) else root, "mlartifacts")
        return self.client.create_experiment(name, artifact_location=artifacts)

    def _parent(self) -> str:
        if "parent" in self.state:
            return self.state["parent"]
        tags = {"prvos.run_id": self.store.run_id, "prvos.run_dir": self.store.run_dir}
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id, run_name=self.store.run_id, tags=tags)
        params = [Param(key, value) for key, value in flatten(self.config.to_dict()).items()]
        self.client.log_batch(run.info.run_id, params=params)
        self.state.update(
            {"tracking_uri": self.tracking_uri, "experiment_id": self.experiment_id, "parent": run.info.run_id}
        )
        self._save()
        return run.info.run_id

    def _round(self, round_index: int) -> str:
        rounds = self.state.setdefault("rounds", {})
        key = str(round_index)
        if key not in rounds:
            tags = {"mlflow.parentRunId": self.parent_id, "prvos.round": key}
            rounds[key] = self.client.create_run(
                self.experiment_id, run_name=f"round {round_index}", tags=tags
            ).info.run_id
            self._save()
        return rounds[key]

    def _log_history(self, run_id: str, history_uri: str) -> None:
        """A training stage's per-epoch metrics as metric histories (step = epoch)."""
        from mlflow.entities import Metric

        metrics = [
            Metric(metric_name(f"epoch.{key}"), float(value), 0, int(epoch["epoch"]))
            for epoch in storage.read_json(history_uri)
            for key, value in epoch.items()
            if isinstance(value, (int, float)) and key != "epoch"
        ]
        self.client.log_batch(run_id, metrics=metrics)

    def _log_small_artifact(self, run_id: str, uri: str) -> None:
        if not uri.endswith(".json") or not storage.exists(uri):
            return
        data = storage.read_bytes(uri)
        if len(data) > _SMALL_ARTIFACT_BYTES:
            return
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / uri.replace("\\", "/").rsplit("/", 1)[-1]
            path.write_bytes(data)
            self.client.log_artifact(run_id, str(path))

    def _save(self) -> None:
        storage.write_json(self.state_uri, self.state)


def log_report(store: RunStore, folder: Path) -> str | None:
    """Log a report folder under `inspect/<folder name>` of the run's MLflow parent run (kept in
    `<run>/mlflow.json`); the artifact path, or None when the run was never tracked."""
    state_uri = storage.join(store.run_dir, STATE_FILE)
    if not storage.exists(state_uri):
        return None
    state = storage.read_json(state_uri)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    artifact_path = f"inspect/{folder.name}"
    try:
        MlflowClient(state["tracking_uri"]).log_artifacts(state["parent"], str(folder), artifact_path=artifact_path)
    except (MlflowException, OSError, KeyError) as error:
        raise StorageError(
            f"report written to {folder}, but logging it to MLflow failed ({first_line(error)})"
        ) from None
    return artifact_path


def ui_command(run_root: Path, port: int) -> list[str]:
    """The command that serves the MLflow UI on 127.0.0.1 (never all interfaces) over `<run_root>/mlflow.db`."""
    database = run_root.resolve() / DATABASE_FILE
    if not database.is_file():
        raise UserError(f"{database} not found; run a pipeline first or pass --root")
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{database}",
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip


def _expressions_frame(manifest):
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "expression_id": e.expression_id,
                "split": e.split,
                "video_id": e.video_id,
                "object_id": e.object_id,
                "text": e.text,
                "gt_frames": len(e.gt_frames),
                "frames": len(e.all_frames),
            }
            for e in manifest.expressions
        ]
    )
