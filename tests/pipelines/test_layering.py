"""Layering inside `pipelines`: MLflow is touched by `pipelines/lineage.py` only, and stage names are spelled
by `pipelines/run_store.py` only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


def _sources() -> dict[str, ast.Module]:
    found = {path.name: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(PIPELINES.glob("*.py"))}
    assert "lineage.py" in found and "run_store.py" in found and len(found) > 8
    return found


def _mlflow_uses(tree: ast.Module) -> list[int]:
    """Lines that import mlflow (at any depth, lazily too) or name it as a module to run (`-m mlflow`)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Constant) and node.value == "mlflow":
            names = ["mlflow"]
        else:
            continue
        if any(name.split(".")[0] == "mlflow" for name in names):
            lines.append(node.lineno)
    return lines


def test_only_lineage_touches_mlflow():
    found = {name: lines for name, tree in _sources().items() if (lines := _mlflow_uses(tree))}
    assert set(found) == {"lineage.py"}, f"mlflow outside pipelines/lineage.py: {found}"


KINDS = ("ingest", "frames", "text", "train", "infer", "refine", "evaluate")
# Calls whose argument is a stage folder name: a bare "ingest" there is a folder name spelled out.
TAKES_A_STAGE = {"read_marker", "stage_dir", "marker_uri", "result", "_marker"}


def _spelled_stage_names(tree: ast.Module) -> list[int]:
    """Lines spelling a stage folder: 'r0-train', f'r{k}-train', f'r{k}-{kind}', or a bare kind given to a call
    that takes a stage."""
    per_round = re.compile(rf"^(r\d+)?-({'|'.join(KINDS)})$")
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and per_round.match(node.value):
            lines.append(node.lineno)
        elif isinstance(node, ast.JoinedStr) and _is_round_folder(node.values):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in TAKES_A_STAGE:
            if any(isinstance(a, ast.Constant) and a.value in KINDS for a in node.args):
                lines.append(node.lineno)
    return lines


def _is_round_folder(values: list[ast.expr]) -> bool:
    """An f-string that starts `r{...}-`: a per-round stage folder built by hand."""
    return (
        len(values) >= 3
        and isinstance(values[0], ast.Constant) and values[0].value == "r"
        and isinstance(values[1], ast.FormattedValue)
        and isinstance(values[2], ast.Constant) and str(values[2].value).startswith("-")
    )  # fmt: skip


def test_stage_folder_names_are_spelled_in_the_run_store_only():
    found = {
        name: lines
        for name, tree in _sources().items()
        if name != "run_store.py" and (lines := _spelled_stage_names(tree))
    }
    assert found == {}, f"stage folder names outside pipelines/run_store.py (use run_store.stage_name): {found}"
