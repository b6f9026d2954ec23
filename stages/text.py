"""Text: encode each distinct expression once into the Zarr text cache, keyed by the encoder's identity.

Training and inference of every round read token features from this cache; the text encoder never runs
inside a training step (the PRVOS seed re-ran DistilBERT for every sample of every epoch).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

from prvos_core import storage
from prvos_core.config import TextSection
from prvos_core.data.manifest import read_manifest
from prvos_core.progress import progress_bar
from prvos_core.text.cache import TextCache
from prvos_core.text.encoder import TextEncoder
from stages.result import StageResult, output

CACHE_FOLDER = "cache.zarr"


@dataclass(frozen=True)
class TextInputs:
    manifest_dir: str
    out_dir: str


@dataclass(frozen=True, kw_only=True)
class TextResult(StageResult):
    stage: ClassVar[str] = "text"
    cache: str = output()  # the Zarr text cache, <dir>/cache.zarr
    identity: str = output()  # the encoder's identity, which keys the cache
    dim: int = output()  # the encoder's hidden width: the model's text_dim
    texts: int  # distinct expression texts
    encoded: int  # of them, encoded by this run (the rest were cached)
    seconds: float


def run(inputs: TextInputs, cfg: TextSection) -> TextResult:
    started = time.perf_counter()
    texts = sorted({expression.text for expression in read_manifest(inputs.manifest_dir).expressions})
    encoder = TextEncoder.from_path(None if cfg.encoder == "minilm" else cfg.encoder, max_tokens=cfg.max_tokens)
    root = storage.join(inputs.out_dir, CACHE_FOLDER)
    cache = TextCache.for_encoder(root, encoder)
    with progress_bar("text", total=len(texts), unit="text") as bar:
        encoded = cache.build(texts, encoder, progress=lambda done, _total: bar.update(done - bar.n))
    return TextResult(
        cache=root,
        identity=encoder.identity,
        dim=encoder.dim,
        texts=len(texts),
        encoded=encoded,
        seconds=time.perf_counter() - started,
    )
