"""Config: YAML + overrides -> frozen typed config; every problem named in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from prvos_core.config import RefineSection, apply_overrides, config_from_dict, load_config
from prvos_core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_and_types():
    config = config_from_dict({"data": {"root": "d", "synth": {"videos": 3, "size": [32, 48]}}})
    assert config.run.root == "runs" and config.ingest.max_text_chars == 512
    assert config.data.synth.size == (32, 48) and config.data.synth.label_every == 5


def test_config_is_frozen():
    config = config_from_dict({"data": {"root": "d"}})
    with pytest.raises(ValidationError):
        config.run.seed = 3


def test_unknown_key_names_it_and_suggests_the_closest():
    with pytest.raises(ConfigError) as error:
        config_from_dict({"data": {"root": "d"}, "ingest": {"max_text_char": 3}})
    assert str(error.value) == "config: unknown key 'ingest.max_text_char' (did you mean 'ingest.max_text_chars'?)"
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError) as error:  # a key older configs have: what replaced it
        config_from_dict({"data": {"root": "d"}, "train": {"amp": True}})
    assert str(error.value) == "config: unknown key 'train.amp' (replaced by train.precision: auto (amp: true) or fp32)"


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as error:
        config_from_dict({"data": {}, "ingest": {"chunk_frames": 0}, "rnu": {}})
    message = str(error.value)
    assert "'data.root' is required" in message
    assert "'ingest.chunk_frames'" in message and "greater than 0" in message
    assert "unknown key 'rnu' (did you mean 'run'?)" in message


def test_negative_and_zero_sizes_are_refused():
    with pytest.raises(ConfigError, match="data.synth.size"):
        config_from_dict({"data": {"root": "d", "synth": {"size": [0, -4]}}})
    with pytest.raises(ConfigError, match="data.synth.videos"):
        config_from_dict({"data": {"root": "d", "synth": {"videos": 0}}})
    with pytest.raises(
        ConfigError, match=r"'data.synth.dynamics': Input should be 'linear' or 'varied' \(got 'wavy'\)"
    ):
        config_from_dict({"data": {"root": "d", "synth": {"dynamics": "wavy"}}})


def test_unsafe_run_id_is_refused():
    with pytest.raises(ConfigError, match="path separator"):
        config_from_dict({"data": {"root": "d"}, "run": {"run_id": "../../etc"}})


def test_overrides_are_typed_by_yaml():
    raw = apply_overrides({"data": {"root": "d"}}, ["run.seed=7", "data.synth.size=[32, 32]", "data.root=other"])
    config = config_from_dict(raw)
    assert config.run.seed == 7 and config.data.synth.size == (32, 32) and config.data.root == "other"
    with pytest.raises(ConfigError, match="run.seed"):
        config_from_dict(apply_overrides({"data": {"root": "d"}}, ["run.seed=abc"]))
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["run.seed"])


def test_yaml_errors_are_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  root: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("data: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("percentile", 100.0),
        ("percentile", -1.0),
        ("min_confidence", 0.4),
        ("max_confidence", 1.0),
        ("weighting", "entropy"),
        ("min_weight", 1.5),
        ("frames_per_expression", 2.5),
        ("min_kept_ratio", 1.2),
    ],
)
def test_refine_validation_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"'refine.{field}'"):
        config_from_dict({"data": {"root": "data"}, "refine": {field: value}})


def test_refine_bounds_in_order_and_the_section_is_frozen():
    with pytest.raises(ConfigError, match="must not exceed refine.max_confidence"):
        config_from_dict({"data": {"root": "data"}, "refine": {"min_confidence": 0.9, "max_confidence": 0.8}})
    with pytest.raises(ConfigError, match="must not be below refine.min_area_ratio"):
        config_from_dict({"data": {"root": "data"}, "refine": {"min_area_ratio": 3, "max_area_ratio": 2}})
    with pytest.raises(ValidationError, match="frozen"):
        RefineSection().percentile = 10.0  # type: ignore[misc]
    assert RefineSection().frames_per_expression == 3


def test_every_problem_of_a_config_is_reported_at_once():
    """Three bad keys in three sections: one error names all three (a bad refine key used to hide the rest)."""
    raw = {
        "data": {"root": "data"},
        "train": {"epochs": 0},
        "infer": {"encodng": "uint8"},
        "refine": {"percentile": 150},
    }
    with pytest.raises(ConfigError) as error:
        config_from_dict(raw)
    message = str(error.value)
    assert "'train.epochs'" in message
    assert "unknown key 'infer.encodng' (did you mean 'infer.encoding'?)" in message
    assert "'refine.percentile'" in message


def test_loading_a_config_imports_no_torch():
    code = (
        "import sys; from prvos_core.config import load_config; "
        "load_config('configs/demo.yaml'); "
        "bad = sorted(m for m in ('torch', 'ray', 'mlflow', 'zarr') if m in sys.modules); "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_saved_config_reads_back_with_the_new_data_options():
    config = config_from_dict({"data": {"root": "d", "train_labels": "every:3", "unlabelled_split": "unlabelled"}})
    again = config_from_dict(config.to_dict())
    assert again == config and again.data.label_regime == ("every", 3) and again.data.unlabelled_root is None


@pytest.mark.parametrize("regime", ["every:x", "every:0", "last", "every"])
def test_a_label_regime_that_does_not_parse_is_one_line_naming_the_forms(regime):
    with pytest.raises(ConfigError, match="provided, first or every:K") as error:
        config_from_dict({"data": {"root": "d", "train_labels": regime}})
    assert "\n" not in str(error.value)


def test_the_unlabelled_split_must_not_be_a_split_of_the_same_root_in_use():
    with pytest.raises(ConfigError, match="unlabelled_split"):
        config_from_dict({"data": {"root": "d", "unlabelled_split": "valid"}})
    config_from_dict({"data": {"root": "d", "unlabelled_split": "valid", "unlabelled_root": "other"}})
