"""Shared by the inference tests: a tiny model in eval mode, built under 2 torch threads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from prvos_core.model.builders import build_model

TEXT_DIM = 384


@contextmanager
def tiny_eval_model(pretrained: bool) -> Iterator[torch.nn.Module]:
    """The tiny model (seed 0) in eval mode, with torch at 2 threads until the block ends."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    try:
        yield build_model("tiny", text_dim=TEXT_DIM, pretrained=pretrained).eval()
    finally:
        torch.set_num_threads(previous)
