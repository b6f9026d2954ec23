"""Label propagation by feature matching: a frame's mask read from the masks of the frames in memory, through the
affinity of the backbone's normalised fine features (the label propagation of self-supervised correspondence
work: each query position takes the softmax-weighted mean of its `top_k` most similar memory positions' labels).

It needs no training, so it carries a ground-truth anchor's mask into the frames around it from the first round
on. The trained memory read of the model (`URVOS.read_memory`) should learn the same, but a round-0 student of
first-frame labels has never seen a memory worth reading: measured on the synthetic set in regime F, its
predictions moved by ~1e-5 with or without its ground-truth anchors (teacher IoU 0.21 on the hidden masks), while
matching on res2 from the same anchors gave 0.45. The teacher blends the two (`Matching.weight`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MATCH_LEVEL = "res2"  # stride 4: finer levels track small objects; res3 (stride 8) measured far worse


@dataclass(frozen=True)
class Matching:
    """How the teacher uses label propagation: its share of a frame's probability (0: the model alone), the
    softmax temperature over cosine similarities and how many memory positions each query position reads."""

    weight: float = 0.0
    temperature: float = 0.02
    top_k: int = 5

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0 or self.temperature <= 0 or self.top_k < 1:
            raise ValueError(f"matching needs weight in [0, 1], temperature > 0 and top_k >= 1, got {self}")


def match_key(features: dict[str, torch.Tensor]) -> torch.Tensor:
    """A frame's matching features: `encode_frame`'s res2 (1,C,h,w) -> (C, h*w) float32, unit length per position."""
    return F.normalize(features[MATCH_LEVEL][0].float().flatten(1), dim=0)


def pooled_mask(prob: torch.Tensor, features: dict[str, torch.Tensor]) -> torch.Tensor:
    """A frame's mask probability (1,H,W) averaged onto its matching grid -> (h*w,) float32."""
    grid = features[MATCH_LEVEL].shape[-2:]
    return F.adaptive_avg_pool2d(prob.float().unsqueeze(0), grid).flatten()


class LabelBank:
    """Matching features and masks of the anchors (kept for the whole video) and of the `recent` latest frames."""

    def __init__(self, recent: int, matching: Matching) -> None:
        self.matching = matching
        self._anchors: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._recent: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=recent)

    def anchor(self, features: dict[str, torch.Tensor], prob: torch.Tensor) -> None:
        self._anchors.append((match_key(features), pooled_mask(prob, features)))

    def add(self, features: dict[str, torch.Tensor], prob: torch.Tensor) -> None:
        if self._recent.maxlen:
            self._recent.append((match_key(features), pooled_mask(prob, features)))

    def __len__(self) -> int:
        return len(self._anchors) + len(self._recent)

    def read(self, features: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """The frame's mask as its memory says: (1,H,W) float32 in [0,1], bilinear from the matching grid."""
        entries = [*self._anchors, *self._recent]
        keys = torch.cat([key for key, _ in entries], dim=1)  # (C, M)
        labels = torch.cat([label for _, label in entries])  # (M,)
        affinity = match_key(features).T @ keys  # (h*w, M)
        top = affinity.topk(min(self.matching.top_k, affinity.shape[1]), dim=1)
        weights = (top.values / self.matching.temperature).softmax(dim=1)
        grid = features[MATCH_LEVEL].shape[-2:]
        matched = (weights * labels[top.indices]).sum(dim=1).view(1, 1, *grid)
        return F.interpolate(matched, size=size, mode="bilinear", align_corners=False)[0].clamp(0.0, 1.0)

    def blend(self, prob: torch.Tensor, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """(1 - weight) x the model's probability (1,H,W) + weight x the matched mask; the model's alone while
        the bank is empty."""
        if not len(self):
            return prob
        weight = self.matching.weight
        return (1.0 - weight) * prob.float() + weight * self.read(features, tuple(prob.shape[-2:]))
