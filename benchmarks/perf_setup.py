"""Shared set-up of the performance benchmarks (benchmarks/perf_*.py): a synthetic dataset ingested with its text
cache, the load average, interleaved timing, and where each part's figures go (JSON + Markdown under
benchmarks/results/performance/, gathered into benchmarks/results/performance.md by benchmarks/performance.py).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from benchmarks.common import RESULTS, git_revision, machine, median  # noqa: E402

PARTS = RESULTS / "performance"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


class LoadLog:
    """Load average (1 min) sampled at each call of `sample`, summarised as min/median/max."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.sample()

    def sample(self) -> None:
        self.values.append(os.getloadavg()[0])

    def __str__(self) -> str:
        return f"1-min load average during the run: min {min(self.values):.1f}, median {median(self.values):.1f}, max {max(self.values):.1f}"


def timed(function, *args, **kwargs) -> float:
    """Seconds of one call of function(*args, **kwargs)."""
    started = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - started


@dataclass(frozen=True)
class Workspace:
    data: Path
    manifest_dir: str
    text_cache: str
    text_identity: str
    text_dim: int


def make_workspace(root: Path, *, videos: int, frames: int, size: tuple[int, int], splits=("train",)) -> Workspace:
    """Synthetic dataset (masks on every 5th frame), ingested, its texts cached with the shipped MiniLM."""
    from prvos_core.config import IngestSection
    from prvos_core.data.manifest import read_manifest
    from prvos_core.datasets.synth import generate_synthetic
    from prvos_core.text.encoder import TextEncoder
    from prvos_core.text.cache import TextCache
    from stages import ingest

    generate_synthetic(root / "data", videos=videos, valid_videos=1, frames=frames, size=size, label_every=5, seed=0)
    manifest_dir = root / "ingest"
    manifest_dir.mkdir(exist_ok=True)
    ingest.run(ingest.IngestInputs(str(root / "data"), tuple(splits), str(manifest_dir)), IngestSection())
    encoder = TextEncoder.from_path(None)
    cache = TextCache.for_encoder(str(root / "text.zarr"), encoder)
    cache.build(sorted({e.text for e in read_manifest(str(manifest_dir)).expressions}), encoder)
    return Workspace(root / "data", str(manifest_dir), str(root / "text.zarr"), encoder.identity, encoder.dim)


def write_part(name: str, title: str, command: str, body: str, figures: dict, load: LoadLog) -> Path:
    """benchmarks/results/performance/<name>.md (the section of performance.md) and <name>.json (its figures)."""
    PARTS.mkdir(parents=True, exist_ok=True)
    header = (
        f"## {title}\n\nCommand: `{command}`  \nMachine: {machine()}  \nRevision: {git_revision()}  \n"
        f"Measured: {time.strftime('%Y-%m-%d %H:%M')}; {load}\n\n"
    )
    (PARTS / f"{name}.md").write_text(header + body.strip() + "\n", encoding="utf-8")
    figures = {**figures, "load": str(load), "command": command}
    (PARTS / f"{name}.json").write_text(json.dumps(figures, indent=1, default=float) + "\n", encoding="utf-8")
    return PARTS / f"{name}.md"


def command_line() -> str:
    return ".venv/bin/python " + " ".join([str(Path(sys.argv[0]).resolve().relative_to(Path.cwd().resolve()))
                                          if Path(sys.argv[0]).resolve().is_relative_to(Path.cwd().resolve())
                                          else sys.argv[0], *sys.argv[1:]])  # fmt: skip
