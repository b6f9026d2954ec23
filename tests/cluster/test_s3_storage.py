"""Artifacts on s3:// against a real S3-compatible server (moto on 127.0.0.1): the storage layer, checkpoints,
Zarr pseudo-label stores and the MLflow tracking default for a remote run root."""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
import pytest
import torch

from prvos_core import storage
from prvos_core.errors import CheckpointError, StorageError
from tests.cluster.conftest import BUCKET


@pytest.fixture
def prefix(s3_env) -> str:
    return f"s3://{BUCKET}/unit-{uuid.uuid4().hex[:8]}"


def test_storage_round_trip(prefix, tmp_path):
    storage.write_json(storage.join(prefix, "a", "x.json"), {"k": [1, 2]})
    assert storage.read_json(storage.join(prefix, "a", "x.json")) == {"k": [1, 2]}
    table = pa.table({"expression_id": ["e1", "e2"], "value": [0.5, 1.0]})
    storage.write_parquet(storage.join(prefix, "a", "t.parquet"), table)
    assert storage.read_parquet(storage.join(prefix, "a", "t.parquet")).equals(table)
    assert storage.listdir(storage.join(prefix, "a")) == ["t.parquet", "x.json"]
    assert not storage.is_local(prefix)

    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "checkpoint.json").write_text("{}")
    (folder / "model.bin").write_bytes(b"w" * 10)
    (folder / "sub" / "n.txt").write_text("n")
    storage.upload_folder(str(folder), storage.join(prefix, "ckpt"), last="checkpoint.json")
    storage.upload_folder(str(folder), storage.join(prefix, "ckpt"), last="checkpoint.json")  # replaces
    assert storage.listdir(storage.join(prefix, "ckpt")) == ["checkpoint.json", "model.bin", "sub"]
    assert storage.read_bytes(storage.join(prefix, "ckpt", "sub", "n.txt")) == b"n"

    # Another process's write (here: another S3 client) shows in the next listing: listings are not cached.
    import pyarrow.fs

    other, path = pyarrow.fs.FileSystem.from_uri(storage.join(prefix, "a", "y.json"))
    with other.open_output_stream(path) as handle:
        handle.write(b"{}")
    assert storage.listdir(storage.join(prefix, "a")) == ["t.parquet", "x.json", "y.json"]

    storage.remove(storage.join(prefix, "a"))
    assert not storage.exists(storage.join(prefix, "a", "x.json"))
    with pytest.raises(StorageError, match="not found"):
        storage.read_bytes(storage.join(prefix, "a", "x.json"))


def test_checkpoint_save_and_load_on_s3(prefix, tmp_path):
    from prvos_core.inference.predict import predictor_identity
    from prvos_core.model.builders import build_model
    from prvos_core.model.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
    from prvos_core.model.ema import EmaTeacher

    model = build_model("tiny", text_dim=16, pretrained=False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    teacher = EmaTeacher(model, decay=0.9)
    uri = storage.join(prefix, "r0-train", "checkpoint")
    assert save_checkpoint(uri, model, optimizer, teacher, meta={"epoch": 1, "step": 4, "round": 0}) == uri
    local = save_checkpoint(
        tmp_path / "checkpoint", model, optimizer, teacher, meta={"epoch": 1, "step": 4, "round": 0}
    )

    assert read_checkpoint_meta(uri)["epoch"] == 1
    loaded = load_checkpoint(uri)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    assert loaded.ema is not None
    same = build_model("tiny", text_dim=16, pretrained=False)
    again = torch.optim.Adam([p for p in same.parameters() if p.requires_grad], lr=1e-3)
    load_checkpoint(uri, model=same, optimizer=again)
    # The identity hashes the file's bytes: the same weights on S3 and on disk hash the same.
    assert predictor_identity(uri, "ema").split("#")[1] == predictor_identity(str(local), "ema").split("#")[1]
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint_meta(storage.join(prefix, "nothing"))


def test_pseudo_label_store_on_s3(prefix):
    from prvos_core.pseudo.store import PseudoLabelWriter, committed_expressions, open_store, read_pseudo_label

    store = open_store(storage.join(prefix, "r0-infer", "pseudo.zarr"))
    writer = PseudoLabelWriter(store, "e1", ["00000", "00001"], (8, 8), "teacher#ema:abc")
    rng = np.random.default_rng(0)
    prob = rng.random((2, 8, 8)).astype(np.float32)
    for index in range(2):
        writer.write(index, prob[index], prob[index] / 2)
    assert committed_expressions(open_store(storage.join(prefix, "r0-infer", "pseudo.zarr"), mode="r")) == set()
    writer.commit()
    reader = open_store(storage.join(prefix, "r0-infer", "pseudo.zarr"), mode="r")
    assert committed_expressions(reader) == {"e1"}
    assert np.abs(read_pseudo_label(reader, "e1").prob - prob).max() <= 0.5 / 255 + 1e-6


def test_mlflow_tracking_for_a_remote_run_root(prefix, tmp_path, monkeypatch):
    from pipelines.lineage import default_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(prefix) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_tracking_uri(prefix) == "http://127.0.0.1:5000"
