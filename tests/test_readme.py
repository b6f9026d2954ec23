"""The README's fresh-machine commands are the ones CI runs, and every shipped config loads."""

from __future__ import annotations

import re
from pathlib import Path

from prvos_core.config import load_config

REPO = Path(__file__).resolve().parents[1]


def _code_lines(text: str) -> list[str]:
    return [line.strip() for block in re.findall(r"```\n(.*?)```", text, re.S) for line in block.splitlines()]


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    lines = _code_lines(readme)
    test_command = next(line for line in lines if "python -m pytest" in line)
    demo_command = next(line for line in lines if line.endswith("prvos demo"))
    ci = (REPO / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()
    # Both commands install the same things; only what they run differs.
    assert test_command.rsplit("&&", 1)[0] == demo_command.rsplit("&&", 1)[0]
    assert "-e '.[test]'" in test_command


def test_every_shipped_config_loads():
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert configs, "no configs shipped"
    for path in configs:
        assert path.read_text().startswith("# Launch:"), f"{path.name} must start with its launch command"
        load_config(path)
