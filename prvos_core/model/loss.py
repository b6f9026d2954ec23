"""Training loss: weighted 2-class pixel cross-entropy with an ignore label, first frame vs propagated frames.

L = L_first + rest_weight * L_rest, as the PRVOS seed (rest_weight 10 there). Each term is a weighted mean:
the sum of weight x cross-entropy over its pixels divided by the sum of the weights of its non-ignored
pixels, pooled over the batch (and, for L_rest, over frames 1..T-1). Pooling means a clip with many
labelled pixels counts more than one with few, and an all-ignored frame adds nothing to either sum. A term
with no labelled pixel at all is 0 (still connected to the graph, so `backward` works), never NaN.

Labels are 0 (background), 1 (object) or IGNORE_INDEX; ground-truth pixels have weight 1, refined
pseudo-labelled pixels the weight refinement gave them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


@dataclass(frozen=True)
class ClipLoss:
    """The loss to back-propagate (`total`) and its two terms, for logging (detached)."""

    total: torch.Tensor  # scalar, L_first + rest_weight * L_rest
    first: torch.Tensor  # scalar, L_first (detached)
    rest: torch.Tensor  # scalar, L_rest (detached); 0 for one-frame clips


def weighted_cross_entropy_sums(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of weight x cross-entropy and sum of weights, over the non-ignored pixels.

    logits (N,2,H,W), labels (N,H,W) integer in {0, 1, IGNORE_INDEX}, weights (N,H,W) >= 0 or None (all 1)
    -> (weighted loss sum, weight sum), float32 scalars.
    """
    labels = labels.long()
    # cross_entropy runs in float32 under autocast, so the sums do too.
    per_pixel = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
    valid = labels != IGNORE_INDEX
    pixel_weights = valid.to(per_pixel.dtype) if weights is None else weights.to(per_pixel.dtype) * valid
    return (per_pixel * pixel_weights).sum(), pixel_weights.sum()


def weighted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted mean cross-entropy: sum(w x CE) / sum(w) over non-ignored pixels; 0 when there are none.

    logits (N,2,H,W), labels (N,H,W), weights (N,H,W) or None -> scalar."""
    loss_sum, weight_sum = weighted_cross_entropy_sums(logits, labels, weights)
    # Where nothing is labelled, loss_sum is an exact 0 that still depends on the logits.
    return loss_sum / weight_sum.clamp_min(torch.finfo(weight_sum.dtype).tiny)


def clip_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    rest_weight: float = 10.0,
) -> ClipLoss:
    """L = L_first + rest_weight * L_rest over a clip.

    logits (B,T,2,H,W) from `URVOS.forward_clip`, labels (B,T,H,W) in {0, 1, IGNORE_INDEX},
    weights (B,T,H,W) or None (every labelled pixel weight 1) -> ClipLoss of scalars.
    """
    if logits.shape[:2] != labels.shape[:2] or logits.shape[-2:] != labels.shape[-2:]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on B, T, H or W")
    first = weighted_cross_entropy(logits[:, 0], labels[:, 0], None if weights is None else weights[:, 0])
    if logits.shape[1] > 1:
        rest = weighted_cross_entropy(
            logits[:, 1:].flatten(0, 1),
            labels[:, 1:].flatten(0, 1),
            None if weights is None else weights[:, 1:].flatten(0, 1),
        )
    else:
        rest = torch.zeros_like(first)
    return ClipLoss(total=first + rest_weight * rest, first=first.detach(), rest=rest.detach())
