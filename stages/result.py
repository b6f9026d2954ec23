"""What every stage returns: where its artifacts are and what it measured."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StageResult:
    stage: str
    outputs: dict[str, str] = field(default_factory=dict)  # artifact name -> URI
    metrics: dict[str, float] = field(default_factory=dict)
    fingerprint: str = ""  # the fingerprint the stage ran under (given by the caller)
