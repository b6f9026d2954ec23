"""Import direction: prvos_core never imports ray, mlflow, stages or pipelines; stages never imports pipelines.

Each module is imported alone in a clean subprocess in which the forbidden packages cannot be imported. Inside
prvos_core, the arrows read from the source (ast, no import) have no cycle and follow DESIGN.md's folder order,
and the layout stays small: at most 8 top-level modules, no module of prvos_core, stages or pipelines over 400 lines.
"""

from __future__ import annotations

import ast
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


# The arrows inside prvos_core, read from the source (no import, no Ray): which module names which.

CORE = "prvos_core"
GROUND = ""  # the ground floor: prvos_core/*.py

# Which folders each folder of prvos_core may import, from ../shared/DESIGN.md ("Layout inside prvos_core"):
# the package reads data/ -> text/ -> model/ -> inference/ -> pseudo/ -> review/ (people correct the teacher's
# least certain frames), with datasets/ and viz/ beside them.
# A module may always import its own folder; the ground floor imports no folder.
ALLOWED_ARROWS: dict[str, set[str]] = {
    GROUND: set(),
    "data": {GROUND},
    "text": {GROUND, "data"},
    "model": {GROUND},
    "inference": {GROUND, "data", "text", "model"},
    "pseudo": {GROUND},
    "datasets": {GROUND, "data"},
    "viz": {GROUND, "data", "pseudo"},
    "review": {GROUND, "data", "pseudo"},
}
# Single arrows against the table that DESIGN.md names, each with its reason.
ALLOWED_EXCEPTIONS: set[tuple[str, str]] = {
    ("prvos_core.data.clips", "prvos_core.pseudo.store"),  # training reads refined labels
    ("prvos_core.inference.video", "prvos_core.viz.pictures"),  # `prvos predict` draws its overlay video
}


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, from every import statement (those inside functions too).

    `from pkg import name` is an arrow to `pkg.name` when that is a module, else to `pkg`; relative imports are
    resolved against the importing module's package. Modules are named by their path under `root`.
    """
    files = {
        ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): path
        for path in (root / package).rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    known = [name for n in range(len(parts), 0, -1) if (name := ".".join(parts[:n])) in files]
                    targets.update(known[:1])  # the module itself, else its nearest package
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                    base = f"{anchor}.{base}" if base else anchor
                for alias in node.names:
                    if f"{base}.{alias.name}" in files:
                        targets.add(f"{base}.{alias.name}")
                    elif base in files:
                        targets.add(base)
        graph[module] = targets - {module}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted, sorted by first member."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph.get(module, ())):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(found)


def folder_of(module: str, packages: set[str]) -> str:
    """The folder of a module: its first sub-package ('' for the package itself and its top-level modules)."""
    parts = module.split(".")[1:]
    return parts[0] if parts and (len(parts) > 1 or module in packages) else GROUND


def arrows_against(
    graph: dict[str, set[str]], allowed: dict[str, set[str]], exceptions: set[tuple[str, str]]
) -> list[str]:
    """Every 'a -> b' between folders that the table does not allow (a folder missing from it allows nothing)."""
    packages = {module for module in graph if any(other.startswith(f"{module}.") for other in graph)}
    wrong = []
    for module, targets in sorted(graph.items()):
        source = folder_of(module, packages)
        for target in sorted(targets):
            folder = folder_of(target, packages)
            if folder != source and folder not in allowed.get(source, set()) and (module, target) not in exceptions:
                wrong.append(f"{module} -> {target}")
    return wrong


def test_prvos_core_has_no_import_cycle():
    cycles = import_cycles(import_graph(REPO, CORE))
    assert not cycles, "import cycles in prvos_core: " + "; ".join(" <-> ".join(cycle) for cycle in cycles)


def test_prvos_core_arrows_follow_the_folder_order():
    graph = import_graph(REPO, CORE)
    packages = {module for module in graph if any(other.startswith(f"{module}.") for other in graph)}
    assert {folder_of(module, packages) for module in graph} == set(ALLOWED_ARROWS), "a folder is missing a row"
    wrong = arrows_against(graph, ALLOWED_ARROWS, ALLOWED_EXCEPTIONS)
    assert not wrong, "arrows against DESIGN.md's folder order: " + "; ".join(wrong)
    used = {(module, target) for module, targets in graph.items() for target in targets}
    assert ALLOWED_EXCEPTIONS <= used, "an exception no longer needed: " + repr(ALLOWED_EXCEPTIONS - used)


def test_the_arrow_checks_report_a_cycle_and_an_upward_arrow(tmp_path):
    files = {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "def late():\n    from pkg.a import value\n",  # an import inside a function counts
        "pkg/c.py": "import os\nimport pkg.a\nfrom pkg.data import NAME\n",  # a name, not a module: pkg.data
        "pkg/data/__init__.py": "NAME = 1\n",
        "pkg/data/low.py": "from pkg.viz.up import draw\n",  # against the order
        "pkg/viz/__init__.py": "",
        "pkg/viz/up.py": "from ..data import low\nfrom . import up\n",  # relative; a self-import is no arrow
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path, "pkg")
    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.a"},
        "pkg.c": {"pkg.a", "pkg.data"},
        "pkg.data": set(),
        "pkg.data.low": {"pkg.viz.up"},
        "pkg.viz": set(),
        "pkg.viz.up": {"pkg.data.low"},
    }
    assert import_cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.data.low", "pkg.viz.up"]]
    allowed = {GROUND: set(), "data": {GROUND}, "viz": {GROUND, "data"}}
    # Two arrows against the order: the ground floor into a folder, and data/ up to viz/.
    assert arrows_against(graph, allowed, set()) == ["pkg.c -> pkg.data", "pkg.data.low -> pkg.viz.up"]
    assert arrows_against(graph, allowed, {("pkg.data.low", "pkg.viz.up")}) == ["pkg.c -> pkg.data"]


def test_the_layout_stays_small():
    top_level = sorted(path.stem for path in (REPO / CORE).glob("*.py") if path.name != "__init__.py")
    assert len(top_level) <= 8, f"prvos_core's ground floor has {len(top_level)} modules: {top_level}"
    long = {
        str(path.relative_to(REPO)): lines
        for package in (CORE, "stages", "pipelines")
        for path in sorted((REPO / package).rglob("*.py"))
        if (lines := len(path.read_text().splitlines())) > 400
    }
    assert not long, f"modules over 400 lines (a sign of two concepts in one file): {long}"
