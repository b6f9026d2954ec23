"""Import direction: prvos_core never imports ray, mlflow, stages or pipelines; stages never imports pipelines.

Each module is imported alone in a clean subprocess in which the forbidden packages cannot be imported.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

BLOCKER = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ImportError(f'blocked import of {{name}}')
        return None
sys.meta_path.insert(0, Blocker())
import importlib
for module in {modules!r}:
    importlib.import_module(module)
"""


def _modules(package: str) -> list[str]:
    return sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for path in (REPO / package).rglob("*.py")
    )


@pytest.mark.parametrize(
    "package, blocked",
    [("prvos_core", ["ray", "mlflow", "stages", "pipelines"]), ("stages", ["pipelines", "mlflow"])],
)
def test_import_direction(package, blocked):
    modules = _modules(package)
    assert modules
    code = BLOCKER.format(blocked=set(blocked), modules=modules)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
