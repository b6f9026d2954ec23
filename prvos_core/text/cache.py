"""Zarr cache of token features: each distinct expression is encoded once per text encoder.

The PRVOS seed ran DistilBERT on every sample of every epoch; here the ingest stage encodes each distinct
text once and every epoch, round and worker reads the rows.

Layout (Zarr v3) under `root`, a local path or an fsspec URL such as `s3://bucket/text_cache` (pass
`storage_options` for the latter):
```
<root>/zarr.json                 root group; one child group per encoder identity (prvos_core.text.encoder.encoder_identity)
<root>/<identity>/zarr.json      attrs: format, rows (the committed row count), max_tokens (L), dim (D)
<root>/<identity>/tokens         float16 (rows, L, D), chunks of 256 rows, zstd 3; zero at padding
<root>/<identity>/mask           bool (rows, L), True at real tokens
<root>/<identity>/texts          UTF-8 strings (rows,): the index, the text of each row
```
The index is a Zarr string array rather than a JSON attribute so the group metadata stays small and the texts
are chunked and compressed: Ref-YouTube-VOS's ~13k expressions are about 1 MB of text, read once per open.

Commit protocol: `build` writes the tokens, mask and texts of a batch past the committed rows, then raises the
`rows` attribute, last. Readers only trust rows below it, so a crash mid-build leaves a cache whose index lists
complete rows only; the next build overwrites the uncommitted tail. Every chunk and metadata write is atomic
(LocalStore writes a temporary file and renames it; an object store PUT is whole), so a batch that rewrites a
shared chunk never tears a committed row. One build at a time per identity; any number of readers.

Memory of `load_all`: rows x L x D x 2 bytes. Ref-YouTube-VOS train, 12,913 texts x 20 x 768 (DistilBERT):
about 400 MB; with MiniLM (384-d) about 200 MB.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import zarr

from prvos_core.data.layout import has_bad_text
from prvos_core.errors import ConfigError, DataError, StorageError

if TYPE_CHECKING:
    # Typing only: a worker that reads the cache never imports transformers.
    from prvos_core.text.encoder import TextEncoder

FORMAT = "prvos-text-cache/1"
# 256 rows of 20 x 768 float16 is a 7.9 MB chunk before compression (3.9 MB with MiniLM).
TOKEN_CHUNK_ROWS = 256
INDEX_CHUNK_ROWS = 4096
_COMPRESSORS = zarr.codecs.ZstdCodec(level=3)
_IDENTITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class TextNotCachedError(DataError, KeyError):
    """A looked-up text has no row in the cache (a KeyError, and a user-fixable DataError)."""

    def __init__(self, text: str, missing_count: int, location: str) -> None:
        others = f" (and {missing_count - 1} other texts)" if missing_count > 1 else ""
        super().__init__(
            f"text {text!r}{others} is not in the text cache {location}; "
            "build the cache for these expressions (the ingest stage does) with the same text encoder"
        )
        self.text = text

    def __str__(self) -> str:
        # KeyError would quote the message; the command line prints it as a plain line.
        return str(self.args[0])


class TextCache:
    """The rows of one text encoder in a Zarr text cache. See the module docstring for layout and commit.

    An instance reads the index once, on first use: open a new instance to see rows another process
    committed later. `load_all` keeps every row in memory for the lookups of a training worker.
    """

    def __init__(self, root: str | os.PathLike[str], identity: str, *, storage_options: dict[str, Any] | None = None):
        if not _IDENTITY.fullmatch(identity):
            raise ConfigError(
                f"text cache identity {identity!r}: use letters, digits, '.', '_' or '-' "
                "(see prvos_core.text.encoder.encoder_identity)"
            )
        # Kept a string, not a Path, so fsspec URLs (s3://...) pass through to zarr unchanged.
        self.root = os.fspath(root)
        if storage_options is not None and "://" not in self.root:
            raise ConfigError(
                f"text cache {self.root}: storage_options are for URL roots (s3://...); drop them for a local path"
            )
        self.identity = identity
        self.storage_options = storage_options
        self._index: dict[str, int] | None = None
        self._memory: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def for_encoder(
        cls, root: str | os.PathLike[str], encoder: TextEncoder, *, storage_options: dict[str, Any] | None = None
    ) -> TextCache:
        return cls(root, encoder.identity, storage_options=storage_options)

    @property
    def location(self) -> str:
        return f"{self.root.rstrip('/')}/{self.identity}"

    @property
    def texts(self) -> tuple[str, ...]:
        """The committed texts, in row order."""
        return tuple(self._read_index())

    def __len__(self) -> int:
        return len(self._read_index())

    def __contains__(self, text: object) -> bool:
        return text in self._read_index()

    def build(
        self,
        texts: Iterable[str],
        encoder: TextEncoder,
        batch_size: int = 64,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Encode the texts that have no row yet, each distinct text once, and commit them batch by batch.

        `progress(done, total)` is called after each committed batch, counting texts to encode.
        Returns how many texts were encoded. Texts must be valid UTF-8 (ingest quarantines the others).
        """
        if encoder.identity != self.identity:
            raise ConfigError(
                f"text cache {self.location}: encoder {encoder.identity} does not match it; "
                "open the cache with TextCache.for_encoder(root, encoder)"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        group = self._open_for_write(encoder.max_tokens, encoder.dim)
        # Re-read from the store: another process may have committed rows since this instance looked.
        self._index = index = _committed_index(group)
        pending = [text for text in dict.fromkeys(texts) if text not in index]
        bad = next((text for text in pending if has_bad_text(text)), None)
        if bad is not None:
            raise DataError(f"text {bad!r} is not valid UTF-8; quarantine or fix that expression before caching")

        arrays = (group["tokens"], group["mask"], group["texts"])
        rows = len(index)
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            tokens, mask = encoder.encode(batch)
            assert tokens.shape == (len(batch), encoder.max_tokens, encoder.dim), tokens.shape
            half = tokens.numpy().astype(np.float16)
            if not np.isfinite(half).all():
                raise ValueError(f"text encoder {self.identity}: features exceed the float16 range; cannot cache them")
            end = rows + len(batch)
            for array in arrays:
                array.resize((end, *array.shape[1:]))
            arrays[0][rows:end] = half
            arrays[1][rows:end] = mask.numpy()
            arrays[2][rows:end] = np.array(batch, dtype=np.dtypes.StringDType())
            group.attrs["rows"] = end  # the commit: written after the rows it counts
            index.update((text, row) for row, text in enumerate(batch, start=rows))
            rows = end
            if progress is not None:
                progress(start + len(batch), len(pending))
        if self._memory is not None:
            self.load_all()
        return len(pending)

    def lookup(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of `texts`: tokens float32 (N, L, D) and mask bool (N, L), True at real tokens.

        Raises TextNotCachedError naming a text that has no row.
        """
        index = self._read_index()
        missing = list(dict.fromkeys(text for text in texts if text not in index))
        if missing:
            raise TextNotCachedError(missing[0], len(missing), self.location)
        rows = np.fromiter((index[text] for text in texts), dtype=np.int64, count=len(texts))
        tokens, mask = self._read_rows(rows)
        return torch.from_numpy(tokens.astype(np.float32)), torch.from_numpy(np.ascontiguousarray(mask))

    def load_all(self) -> TextCache:
        """Read every committed row into memory (float16; see the module docstring for the size); later
        lookups do not touch the store. Returns self."""
        group = self._open_for_read()
        rows = 0 if group is None else int(group.attrs["rows"])
        self._index = {} if group is None else _committed_index(group, rows)
        # An empty cache holds nothing to keep; its lookups can only fail or be empty.
        self._memory = (group["tokens"][:rows], group["mask"][:rows]) if rows else None
        return self

    def _read_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """tokens float16 (N, L, D) and mask bool (N, L) of committed `rows` (N,), from memory or the store."""
        if self._memory is not None:
            return self._memory[0][rows], self._memory[1][rows]
        group = self._open_for_read()
        if group is None:
            # Only an empty query on a cache never built gets here.
            return np.zeros((0, 0, 0), np.float16), np.zeros((0, 0), bool)
        # Read each chunk once however often a row repeats in the query.
        unique, inverse = np.unique(rows, return_inverse=True)
        tokens = group["tokens"].get_orthogonal_selection((unique, slice(None), slice(None)))
        mask = group["mask"].get_orthogonal_selection((unique, slice(None)))
        return tokens[inverse], mask[inverse]

    def _read_index(self) -> dict[str, int]:
        if self._index is None:
            group = self._open_for_read()
            self._index = {} if group is None else _committed_index(group)
        return self._index

    def _open_for_read(self) -> zarr.Group | None:
        """The identity's group, or None if nothing was ever built for it."""
        try:
            root = zarr.open_group(store=self.root, mode="r", zarr_format=3, **self._store_kwargs())
        except FileNotFoundError:
            return None
        group = root.get(self.identity)
        if group is None:
            return None
        return self._check(group)

    def _open_for_write(self, max_tokens: int, dim: int) -> zarr.Group:
        try:
            root = zarr.open_group(store=self.root, mode="a", zarr_format=3, **self._store_kwargs())
            group = root.get(self.identity)
            if group is None:
                group = root.create_group(
                    self.identity, attributes={"format": FORMAT, "rows": 0, "max_tokens": max_tokens, "dim": dim}
                )
            group = self._check(group)
            # Created one by one, so a crash may leave some missing: create what is absent.
            shapes = {
                "tokens": ((0, max_tokens, dim), (TOKEN_CHUNK_ROWS, max_tokens, dim), "float16"),
                "mask": ((0, max_tokens), (INDEX_CHUNK_ROWS, max_tokens), "bool"),
                "texts": ((0,), (INDEX_CHUNK_ROWS,), str),
            }
            for name, (shape, chunks, dtype) in shapes.items():
                if name not in group:
                    group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, compressors=_COMPRESSORS)
        except PermissionError as error:
            raise StorageError(f"text cache {self.location}: cannot write ({error}); fix its permissions") from None
        return group

    def _check(self, node: Any) -> zarr.Group:
        if not isinstance(node, zarr.Group) or node.attrs.get("format") != FORMAT:
            raise StorageError(
                f"{self.location} is not a PRVOS text cache ({FORMAT}); remove it or choose another cache root"
            )
        return node

    def _store_kwargs(self) -> dict[str, Any]:
        # zarr rejects storage_options for a local path, so pass them only when given.
        return {} if self.storage_options is None else {"storage_options": self.storage_options}


def _committed_index(group: zarr.Group, rows: int | None = None) -> dict[str, int]:
    """text -> row for the committed rows (all `rows` attr counts unless given)."""
    rows = int(group.attrs["rows"]) if rows is None else rows
    if rows == 0:
        return {}
    texts = group["texts"][:rows].tolist()
    index = {text: row for row, text in enumerate(texts)}
    assert len(index) == rows, f"{group.path}: duplicate texts in the index"
    return index
