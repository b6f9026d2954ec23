"""Fixtures of the stage tests: a tiny synthetic dataset, its manifest and its text cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from prvos_core.config import IngestSection
from prvos_core.datasets.synth import generate_synthetic
from prvos_core.text.cache import TextCache
from stages import ingest


@dataclass(frozen=True)
class TinyRun:
    data: Path
    manifest_dir: str
    text_cache: str
    text_identity: str
    text_dim: int


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, ray_local, minilm) -> TinyRun:
    """2 train videos x 10 frames at 48x48 (masks on every 5th frame), ingested, texts cached."""
    root = tmp_path_factory.mktemp("tiny")
    generate_synthetic(root / "data", videos=2, valid_videos=1, frames=10, size=(48, 48), label_every=5, seed=7)
    manifest_dir = root / "ingest"
    manifest_dir.mkdir()
    ingest.run(ingest.IngestInputs(str(root / "data"), ("train", "valid"), str(manifest_dir)), IngestSection())
    from prvos_core.data.manifest import read_manifest

    texts = sorted({e.text for e in read_manifest(str(manifest_dir)).expressions})
    cache = TextCache.for_encoder(str(root / "text.zarr"), minilm)
    cache.build(texts, minilm)
    return TinyRun(root / "data", str(manifest_dir), str(root / "text.zarr"), minilm.identity, minilm.dim)
