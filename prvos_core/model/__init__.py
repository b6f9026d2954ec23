"""The RVOS model package: the URVOS-style network, its builders, loss, EMA teacher, propagation, checkpoints.

Typical use: `model = build_model("tiny", text_dim=384)` (or "r50" with `backbone_weights=<path>`);
training: `clip_loss(model.forward_clip(frames, words, word_mask), labels, weights).total` on logits
(B,T,2,H,W); pseudo-labeling: `propagate(teacher.model, frames, words, word_mask, first_mask)` -> (T,H,W).
"""

from prvos_core.model.builders import SIZES, ParameterCount, build_model, count_parameters, model_spec
from prvos_core.model.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_optimizer_state,
    read_checkpoint_meta,
    save_checkpoint,
)
from prvos_core.model.ema import EmaTeacher
from prvos_core.model.loss import IGNORE_INDEX, ClipLoss, clip_loss, weighted_cross_entropy
from prvos_core.model.propagation import MemoryBank, iter_propagate, propagate
from prvos_core.model.urvos import URVOS, ModelSpec

__all__ = [
    "IGNORE_INDEX",
    "SIZES",
    "URVOS",
    "Checkpoint",
    "ClipLoss",
    "EmaTeacher",
    "MemoryBank",
    "ModelSpec",
    "ParameterCount",
    "build_model",
    "clip_loss",
    "count_parameters",
    "iter_propagate",
    "load_checkpoint",
    "load_optimizer_state",
    "model_spec",
    "propagate",
    "read_checkpoint_meta",
    "save_checkpoint",
    "weighted_cross_entropy",
]
