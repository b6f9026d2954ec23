"""Training loss: weighted 2-class pixel cross-entropy with an ignore label, first frame vs propagated frames,
plus an optional soft Dice term that balances the small foreground against the background.

L = L_first + rest_weight * L_rest (+ dice_weight * L_dice), as the PRVOS seed (rest_weight 10, no Dice there). Each term is a weighted mean:
the sum of weight x cross-entropy over its pixels divided by the sum of the weights of its non-ignored
pixels, pooled over the batch (and, for L_rest, over frames 1..T-1). Pooling means a clip with many
labelled pixels counts more than one with few, and an all-ignored frame adds nothing to either sum. A term
with no labelled pixel at all is 0 (still connected to the graph, so `backward` works), never NaN.

Objects often cover a few percent of a frame, so per-pixel cross-entropy is small when the model predicts
background everywhere; L_dice (1 - soft Dice of the foreground, per frame, over its non-ignored pixels, weighted
like the cross-entropy) is the same for a large and a small object and so pulls the prediction onto the object.

Labels are 0 (background), 1 (object) or IGNORE_LABEL; ground-truth pixels have weight 1, refined
pseudo-labelled pixels the weight refinement gave them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prvos_core.labels import IGNORE_LABEL


@dataclass(frozen=True)
class ClipLoss:
    """The loss to back-propagate (`total`) and its two terms, for logging (detached)."""

    total: torch.Tensor  # scalar, L_first + rest_weight * L_rest + dice_weight * L_dice
    first: torch.Tensor  # scalar, L_first (detached)
    rest: torch.Tensor  # scalar, L_rest (detached); 0 for one-frame clips
    dice: torch.Tensor  # scalar, L_dice (detached); 0 when dice_weight is 0


def weighted_cross_entropy_sums(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of weight x cross-entropy and sum of weights, over the non-ignored pixels.

    logits (N,2,H,W), labels (N,H,W) integer in {0, 1, IGNORE_LABEL}, weights (N,H,W) >= 0 or None (all 1)
    -> (weighted loss sum, weight sum), float32 scalars.
    """
    labels = labels.long()
    # cross_entropy runs in float32 under autocast, so the sums do too.
    per_pixel = F.cross_entropy(logits, labels, ignore_index=IGNORE_LABEL, reduction="none")
    valid = labels != IGNORE_LABEL
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


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over frames of 1 - soft Dice of the foreground: 1 - (2 sum(w p y) + 1) / (sum(w (p + y)) + 1), with
    p the foreground probability, y the object label and w the pixel weights (0 on ignored pixels).

    logits (N,2,H,W), labels (N,H,W), weights (N,H,W) or None -> scalar. Frames without a labelled pixel are
    left out; with none at all the result is an exact 0 still connected to the logits. The +1 keeps a frame
    without the object defined: there the loss falls as the predicted foreground shrinks.
    """
    labels = labels.long()
    valid = labels != IGNORE_LABEL
    pixel_weights = valid.float() if weights is None else weights.float() * valid
    prob = logits.float().softmax(dim=1)[:, 1]
    target = (labels == 1).float()
    intersection = (pixel_weights * prob * target).flatten(1).sum(1)
    total = (pixel_weights * (prob + target)).flatten(1).sum(1)
    per_frame = 1.0 - (2.0 * intersection + 1.0) / (total + 1.0)
    labelled = (pixel_weights.flatten(1).sum(1) > 0).float()
    return (per_frame * labelled).sum() / labelled.sum().clamp_min(1.0)


def clip_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    rest_weight: float = 10.0,
    dice_weight: float = 0.0,
) -> ClipLoss:
    """L = L_first + rest_weight * L_rest + dice_weight * L_dice over a clip (L_dice over all its frames).

    logits (B,T,2,H,W) from `URVOS.forward_clip`, labels (B,T,H,W) in {0, 1, IGNORE_LABEL},
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
    total = first + rest_weight * rest
    dice = torch.zeros_like(first)
    if dice_weight > 0:
        dice = soft_dice_loss(
            logits.flatten(0, 1), labels.flatten(0, 1), None if weights is None else weights.flatten(0, 1)
        )
        total = total + dice_weight * dice
    return ClipLoss(total=total, first=first.detach(), rest=rest.detach(), dice=dice.detach())
