"""A synthetic dataset is written only where the config says so (`data.synth.create: true`, as `prvos demo` sets
it); anywhere else an absent `data.root` is a one-line error that names it, also in a config that holds synthesis
parameters (configs/demo.yaml), so a mistyped root never quietly becomes a new synthetic set."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.pipeline import ensure_dataset
from prvos_core.config import config_from_dict, load_config
from prvos_core.data.source import split_exists
from prvos_core.errors import ConfigError, DataError
from tests.reliability.conftest import assert_one_line_error, cli

REPO = Path(__file__).resolve().parents[2]
SMALL = {"videos": 1, "valid_videos": 1, "frames": 2, "size": [16, 16], "seed": 0}


def _config(root: Path | str, synth: dict | None):
    data = {"root": str(root)} if synth is None else {"root": str(root), "synth": synth}
    return config_from_dict({"name": "t", "data": data})


def test_a_missing_root_is_named_even_where_the_config_could_synthesize(tmp_path):
    root = tmp_path / "mistyped"
    with pytest.raises(DataError, match=f"dataset root {root} not found.*data.synth.create=true"):
        ensure_dataset(_config(root, SMALL))
    assert not root.exists()


def test_a_missing_root_without_synthesis_parameters_is_named(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"dataset root {root} not found"):
        ensure_dataset(_config(root, None))
    assert not root.exists()


def test_the_set_is_written_where_the_config_says_so_then_read_as_it_is(tmp_path):
    root = tmp_path / "synth"
    config = _config(root, {**SMALL, "create": True})
    ensure_dataset(config)
    assert (root / "train" / "meta.json").is_file() and (root / "valid" / "meta.json").is_file()
    frames = sorted(p.name for p in (root / "train" / "JPEGImages").glob("*/*.jpg"))
    assert len(frames) == 2
    written = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    ensure_dataset(config)  # present: kept as it is
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == written


def test_create_names_an_object_store_root_as_the_problem():
    with pytest.raises(ConfigError, match="data.synth.create writes a local folder, but data.root is s3://"):
        ensure_dataset(_config("s3://bucket/synth", {**SMALL, "create": True}))


def test_the_demo_config_reads_its_data_and_the_demo_command_creates_it(tmp_path, capsys):
    assert load_config(REPO / "configs" / "demo.yaml").data.synth.create is False
    typo = tmp_path / "data" / "demo_sytnh"
    run_root = f"run.root={tmp_path / 'runs'}"
    result = cli("run", REPO / "configs" / "demo.yaml", "--set", f"data.root={typo}", "--set", run_root, capsys=capsys)
    assert_one_line_error(result, f"dataset root {typo} not found", "data.synth.create=true")
    assert not typo.exists()
    # `prvos demo` sets data.synth.create: shown without a run by the one root it refuses to create.
    result = cli("demo", "--set", "data.root=s3://bucket/demo", "--set", run_root, capsys=capsys)
    assert_one_line_error(result, "data.synth.create writes a local folder")


def test_the_small_real_config_reads_the_real_clips_beside_the_checkout(shared_data):
    """configs/small_real_cpu.yaml, launched from the checkout, finds the real clips with both of its splits."""
    config = load_config(REPO / "configs" / "small_real_cpu.yaml")
    root = (REPO / config.data.root).resolve()
    assert root == (shared_data / "ref_davis16_mini").resolve() and config.data.synth is None
    ensure_dataset(load_config(REPO / "configs" / "small_real_cpu.yaml", [f"data.root={root}"]))
    assert split_exists(root, config.data.train_split) and split_exists(root, config.data.valid_split)
