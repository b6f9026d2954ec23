"""Progress for long work: stage, round, items done/total and rate, on stderr.

A thin layer over tqdm so every stage shows progress the same way; on a non-terminal (CI, Ray worker logs)
it updates at most every few seconds instead of redrawing.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def progress_bar(stage: str, total: int, unit: str = "item", round_index: int | None = None):
    """A progress bar labelled `[r<round>] <stage>`; yields an object with `update(n)`."""
    label = stage if round_index is None else f"r{round_index} {stage}"
    interactive = sys.stderr.isatty()
    bar = tqdm(
        total=total,
        desc=label,
        unit=unit,
        file=sys.stderr,
        mininterval=0.2 if interactive else 5.0,
        dynamic_ncols=interactive,
        ascii=not interactive,
        leave=True,
    )
    try:
        yield bar
    finally:
        bar.close()
