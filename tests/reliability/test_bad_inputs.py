"""Bad inputs through the `prvos` command line and the stages: each gives one clear line (or a quarantine row),
a non-zero exit where the run cannot go on, never a traceback, and never a half-written stage marked as done.

Each case is counted in tests/reliability/README.md.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from prvos_core import storage
from prvos_core.errors import CheckpointError, StorageError
from tests.reliability.conftest import assert_nothing_half_committed, assert_one_line_error, cli, prvos, write_config
from tests.stages.test_ingest import build_broken_dataset


def _config(tmp_path: Path, data_root: Path | str, **sections) -> Path:
    raw = {"name": "bad", "run": {"root": str(tmp_path / "runs")}, "data": {"root": str(data_root)}, **sections}
    return write_config(tmp_path / "bad.yaml", raw)


# (case, overrides or YAML text, fragments the one error line must hold). No Ray needed: config is checked first.
CONFIG_CASES = [
    ("mistyped key", ["--set", "train.epoch=2"], ["unknown key 'train.epoch'", "did you mean 'train.epochs'"]),
    ("unknown section", ["--set", "trainer.epochs=2"], ["unknown key 'trainer'", "did you mean 'train'"]),
    ("zero batch size", ["--set", "train.batch_size=0"], ["'train.batch_size'", "greater than 0", "(got 0)"]),
    ("negative epochs", ["--set", "train.epochs=-3"], ["'train.epochs'", "greater than 0"]),
    ("negative rounds", ["--set", "rounds=-1"], ["'rounds'", "greater than or equal to 0"]),
    ("zero input size", ["--set", "model.input_size=[0,32]"], ["'model.input_size'", "at least 16 pixels"]),
    ("tiny synthetic frames", ["--set", "data.synth.size=[8,8]"], ["'data.synth.size'", "at least 16 pixels"]),
    ("mistyped value", ["--set", "train.epochs=many"], ["'train.epochs'", "integer", "'many'"]),
    ("override without '='", ["--set", "train.epochs"], ["must look like section.key=value"]),
    ("unknown model size", ["--set", "model.size=huge"], ["'model.size'", "'tiny' or 'r50'"]),
    ("split id with ../", ["--set", "data.train_split=../train"], ["'data.train_split'", "path separator"]),
    ("run id with ../ in the config", ["--set", "run.run_id=../escape"], ["'run.run_id'", "path separator"]),
    (
        "run id with ../ on the command line",
        ["--run-id", "../escape"],
        ["run id '../escape'", "not safe as a folder name"],
    ),
    ("run id with /", ["--run-id", "a/b"], ["run id 'a/b'", "path separator"]),
    ("run id with ..", ["--run-id", "x..y"], ["run id 'x..y'", "contains '..'"]),
    ("unknown stage", ["--stages", "ingets"], ["unknown stage(s) ingets", "choose from ingest"]),
]


@pytest.mark.parametrize("case, args, fragments", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_problems_are_one_line(case, args, fragments, tmp_path, capsys):
    config = _config(tmp_path, tmp_path / "data", data={"root": str(tmp_path / "data"), "synth": {"videos": 2}})
    assert_one_line_error(cli("run", config, *args, capsys=capsys), *fragments)
    assert not (tmp_path / "runs/escape").exists() and not (tmp_path / "escape").exists()
    assert not list((tmp_path / "runs").glob("*/*/_COMMITTED.json"))


CONFIG_FILES = [
    ("config file missing", None, ["missing.yaml", "not found", "see configs/"]),
    ("config not YAML", "name: [unclosed\n", ["not valid YAML at line", "fix its syntax"]),
    ("config truncated", "name: t\nrun: {root: x, seed: 1\n", ["not valid YAML at line"]),
    ("config a list", "- name\n- run\n", ["must hold a mapping of sections, got list"]),
    ("config not UTF-8", b"name: caf\xe9 \xff\n", ["not valid YAML"]),
    ("misspelt section in the file", "name: t\ndata: {root: d}\ntrian: {epochs: 1}\n", ["unknown key 'trian'"]),
    ("required key missing", "name: t\n", ["'data' is required"]),
]


@pytest.mark.parametrize("case, content, fragments", CONFIG_FILES, ids=[c[0] for c in CONFIG_FILES])
def test_bad_config_files_are_one_line(case, content, fragments, tmp_path, capsys):
    path = tmp_path / ("missing.yaml" if content is None else "c.yaml")
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    assert_one_line_error(cli("run", path, capsys=capsys), *fragments)


def test_credentials_in_a_config_are_refused_and_never_echoed(tmp_path, capsys):
    config = _config(tmp_path, tmp_path / "data")
    secret = "wJalrXUtnFEMI-K7MDENG-EXAMPLEKEY"
    key = cli("run", config, "--set", f"run.aws_secret_access_key={secret}", capsys=capsys)
    assert_one_line_error(key, "unknown key 'run.aws_secret_access_key'", "(remove it)")
    uri = cli("run", config, "--set", f"run.root=s3://AKIAEXAMPLE:{secret}@bucket/runs", capsys=capsys)
    assert_one_line_error(uri, "'run.root': holds credentials", "set them in the environment")
    assert secret not in key.err + key.out + uri.err + uri.out


def test_folders_that_are_not_runs(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    for command in ("resume", "status"):
        assert_one_line_error(cli(command, tmp_path / "plain", capsys=capsys), "is not a PRVOS run", "prvos run")
    assert_one_line_error(cli("resume", tmp_path / "nowhere", capsys=capsys), "nowhere is not a PRVOS run")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.yaml").write_bytes(b"\x00\xff{{{ not yaml")
    assert_one_line_error(cli("resume", damaged, capsys=capsys), "config.yaml is damaged", "start a new run")
    assert_one_line_error(cli("ui", "--root", tmp_path / "plain", capsys=capsys), "mlflow.db not found")


def test_read_only_run_root(tmp_path, capsys, read_only_folder):
    config = _config(tmp_path, tmp_path / "data", run={"root": str(read_only_folder / "runs")})
    line = assert_one_line_error(cli("run", config, "--stages", "ingest", capsys=capsys), str(read_only_folder))
    assert "cannot create the run folder" in line and "choose a writable run.root" in line


@pytest.fixture
def read_only_folder(tmp_path):
    """A read-only filesystem as root (a tmpfs mounted ro: root ignores permission bits), else a chmod 555 folder."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


# --- inputs that need the ingest stage (Ray) -------------------------------------------------------------------


def test_quarantine_rows_for_every_broken_item(tmp_path, capsys, ray_local):
    """tests/stages' broken dataset through `prvos run --stages ingest`: exit 0, one quarantine row per item."""
    expected = build_broken_dataset(tmp_path / "data")
    config = _config(tmp_path, tmp_path / "data")
    outcome = cli("run", config, "--stages", "ingest", "--run-id", "quarantine", capsys=capsys)
    assert outcome.code == 0 and "Traceback" not in outcome.err, outcome.err[-2000:]
    rows = pq.read_table(tmp_path / "runs/quarantine/ingest/quarantine.parquet").to_pylist()
    reasons = {row["item"]: row["reason"] for row in rows}
    assert len(rows) == len(expected["reasons"]) == 17
    for item, reason in expected["reasons"].items():
        assert reason in reasons[item], (item, reasons.get(item))
    assert assert_nothing_half_committed(tmp_path / "runs") == 1


def test_unsafe_expression_key_is_quarantined(tmp_path, capsys, ray_local):
    """An expression key becomes a folder of the submission zip: `../x` is quarantined, not written out."""
    root = tmp_path / "data"
    build_broken_dataset(root)
    meta = root / "meta_expressions/train/meta_expressions.json"
    payload = json.loads(meta.read_bytes().decode("utf-8", errors="replace"))
    payload["videos"]["good"]["expressions"]["../../escape"] = {"exp": "a zip slip", "obj_id": "1"}
    meta.write_text(json.dumps(payload))
    outcome = cli("run", _config(tmp_path, root), "--stages", "ingest", "--run-id", "keys", capsys=capsys)
    assert outcome.code == 0, outcome.err[-2000:]
    rows = pq.read_table(tmp_path / "runs/keys/ingest/quarantine.parquet").to_pylist()
    assert any(r["item"] == "good/expression ../../escape" and "unsafe expression key" in r["reason"] for r in rows)


DATASET_CASES = [
    ("dataset root missing", None, ["nope", "not found"]),
    ("meta_expressions truncated", '{"videos": {"a": {"frames": ["0000', ["meta_expressions.json", "malformed JSON"]),
    ("meta_expressions not JSON", "videos = []", ["meta_expressions.json", "malformed JSON"]),
    ("meta_expressions of the wrong shape", '{"videos": [1, 2]}', ["meta_expressions.json", "no 'videos' object"]),
]


@pytest.mark.parametrize("case, content, fragments", DATASET_CASES, ids=[c[0] for c in DATASET_CASES])
def test_unusable_datasets_are_one_line(case, content, fragments, tmp_path, capsys, ray_local):
    root = tmp_path / "nope"
    if content is not None:
        (root / "meta_expressions/train").mkdir(parents=True)
        (root / "meta_expressions/train/meta_expressions.json").write_text(content)
    outcome = cli("run", _config(tmp_path, root), "--stages", "ingest", capsys=capsys)
    assert_one_line_error(outcome, *fragments)
    assert not list((tmp_path / "runs").glob("*/ingest/_COMMITTED.json"))


def test_disk_full_while_writing_the_manifest(tmp_path, capsys, ray_local, monkeypatch):
    """ENOSPC on the manifest's write: one line, the partial file removed, no marker."""
    build_broken_dataset(tmp_path / "data")
    real_open = open

    def full_disk_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        if "w" in mode and ".parquet." in os.path.basename(str(path)):
            handle.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return handle

    monkeypatch.setattr(storage, "open", full_disk_open, raising=False)
    outcome = cli("run", _config(tmp_path, tmp_path / "data"), "--stages", "ingest", "--run-id", "full", capsys=capsys)
    assert_one_line_error(outcome, ".parquet", "No space left on device", "check free space")
    ingest = tmp_path / "runs/full/ingest"
    assert not (ingest / "_COMMITTED.json").exists()
    assert not [p for p in ingest.rglob("*") if p.name.endswith(".partial")]


def test_a_second_prvos_run_on_a_locked_run_is_refused(tmp_path, capsys):
    """The lock file of a live `prvos run` (this test process stands in for it) refuses a second writer."""
    from pipelines.lock import RunLock

    config = _config(tmp_path, tmp_path / "data")
    with RunLock(str(tmp_path / "runs/busy")):
        outcome = cli("run", config, "--run-id", "busy", capsys=capsys)
    assert_one_line_error(outcome, "runs/busy is in use by pid", str(os.getpid()), "wait for it to finish")


# --- damaged artifacts (stage functions) -----------------------------------------------------------------------


def _tiny_checkpoint(folder: Path, text_dim: int = 8) -> Path:
    from prvos_core.model.builders import build_model
    from prvos_core.model.checkpoint import save_checkpoint

    model = build_model("tiny", text_dim=text_dim, pretrained=False)
    return save_checkpoint(folder, model, meta={"epoch": 0, "step": 0, "round": 0})


def test_checkpoint_of_another_model_is_one_line(tmp_path):
    from prvos_core.config import ModelSection, TrainSection
    from stages import train

    checkpoint = _tiny_checkpoint(tmp_path / "ckpt")
    meta = json.loads((checkpoint / "checkpoint.json").read_text())
    (checkpoint / "checkpoint.json").write_text(json.dumps({**meta, "size": "r50"}))
    inputs = train.TrainInputs(
        manifest_dir=str(tmp_path), text_cache="", text_identity="", text_dim=8, split="train",
        out_dir=str(tmp_path / "out"), model=ModelSection(size="tiny"), init_checkpoint=str(checkpoint), round_index=1,
    )  # fmt: skip
    with pytest.raises(CheckpointError) as raised:
        train.run(inputs, TrainSection())
    message = str(raised.value)
    assert "holds a r50 model" in message and "trains tiny" in message and "train.init=scratch" in message
    assert "\n" not in message and not (tmp_path / "out").exists()


def test_corrupted_and_mismatched_safetensors_are_one_line(tmp_path):
    from prvos_core.model.builders import build_model
    from prvos_core.model.checkpoint import load_checkpoint

    checkpoint = _tiny_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="does not match|missing|unexpected|shape"):
        load_checkpoint(checkpoint, model=build_model("tiny", text_dim=16, pretrained=False))
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(checkpoint)
    assert "model.safetensors is corrupt" in str(raised.value) and "\n" not in str(raised.value)


def test_damaged_commit_marker(tmp_path, capsys):
    from pipelines.run_store import RunStore
    from pipelines.runner import run_stage
    from stages.ingest import IngestResult

    store = RunStore(str(tmp_path), "run")
    store.write_config(__import__("prvos_core.config", fromlist=["x"]).config_from_dict({"data": {"root": "d"}}))
    counts = dict.fromkeys(("videos", "expressions", "quarantined", "frames", "files_checked", "splits"), 0)
    empty = IngestResult(videos_table="v", expressions_table="e", quarantine_table="q", frames_per_second=0.0,
                         seconds=0.0, check_seconds=0.0, **counts)  # fmt: skip
    work = lambda folder: empty  # noqa: E731
    run_stage(store, "ingest", "fp", work, IngestResult)
    Path(store.marker_uri("ingest")).write_text('{"stage": "ingest", "fingerprint": ')  # truncated
    with pytest.raises(StorageError, match="not valid JSON"):
        store.read_marker("ingest")
    assert_one_line_error(cli("status", store.run_dir, capsys=capsys), "_COMMITTED.json", "not valid JSON")
    verified = cli("status", store.run_dir, "--verify", capsys=capsys)
    assert "Traceback" not in verified.err
    # The runner treats an unreadable marker as no marker: the stage runs again and commits.
    assert run_stage(store, "ingest", "fp", work, IngestResult).ran and store.read_marker("ingest").fingerprint == "fp"


def test_real_processes_print_no_traceback(tmp_path):
    """The same one-line errors from a real `prvos` process (entry point, logging and exit code as users see)."""
    config = _config(tmp_path, tmp_path / "data")
    assert_one_line_error(prvos("run", config, "--set", "train.epoch=2", cwd=tmp_path), "did you mean 'train.epochs'")
    assert_one_line_error(prvos("resume", tmp_path, cwd=tmp_path), "is not a PRVOS run")
    assert_one_line_error(prvos("run", config, "--run-id", "../x", cwd=tmp_path), "run id '../x'")
