"""The URVOS-style referring video segmentation network, as named steps shared by clip training and
frame-by-frame inference (as Cutie's network).

Steps, for N frames of size H x W (frames are float in [0, 1]):
- `encode_frame(images)`: backbone res2..res5 + the frame's memory key at res4.
- `encode_text(words, word_mask)`: text-encoder token embeddings (width Dt) -> model width.
- `attend_words(res5, text, word_mask)`: cross-modal attention of res5 pixels to the words.
- `sentence(text, word_mask)`: the mean of the projected words, which modulates every decoder level.
- `encode_memory(features, frame, mask_prob)`: (key, value) of a frame whose mask is known or predicted.
- `read_memory(query_key, memory_keys, memory_values)`: space-time memory read at res4.
- `decode(features, text_visual, readout, size, sentence)`: refine decoder -> 2-class logits at input resolution.

`forward_clip` chains them over a clip for training; `prvos_core.inference.propagation` chains them for inference.
The numbers (widths, heads, backbone) live in `builders.py`; this module only takes a `ModelSpec`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from prvos_core.model import layers

TRAINABLE_CHOICES = ("all", "all_frozen_bn", "decoder")


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of one named size; `builders.SIZES` holds the values."""

    size: str  # the builder's name for it: "tiny" or "r50"
    backbone: str  # "efficientnet_lite0" or "resnet50"
    text_dim: int  # width Dt of the text encoder's token embeddings (384 MiniLM, 768 DistilBERT)
    width: int  # model width of words and cross-modal res5 features
    heads: int  # heads of the cross-modal attention
    key_dim: int  # memory key channels
    value_dim: int  # memory value channels
    mask_dim: int  # channels of the (frame, mask) path of the memory encoder
    decoder_dim: int  # channels of the refine decoder
    input_size: tuple[int, int]  # training/inference frame size (H, W); the network accepts others too
    # "all"; "all_frozen_bn": the backbone trains but its batch-norms keep their statistics and affine
    # weights (eval mode, no grad); "decoder": only the decoder trains, as the PRVOS seed
    trainable: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class URVOS(nn.Module):
    """Backbone + text projection + cross-modal attention + memory key/value + refine decoder."""

    def __init__(self, spec: ModelSpec, backbone: nn.Module) -> None:
        super().__init__()
        if spec.trainable not in TRAINABLE_CHOICES:
            raise ValueError(f"trainable must be one of {TRAINABLE_CHOICES}, got {spec.trainable!r}")
        self.spec = spec
        c2, c3, c4, c5 = backbone.channels
        self.backbone = backbone
        self.text_projection = nn.Sequential(nn.Linear(spec.text_dim, spec.width), nn.LayerNorm(spec.width))
        self.cross_modal = layers.CrossModalAttention(c5, spec.width, spec.heads)
        self.key_projection = nn.Conv2d(c4, spec.key_dim, 3, padding=1)
        self.memory_encoder = layers.MemoryValueEncoder(c4, spec.value_dim, spec.mask_dim)
        self.decoder = layers.RefineDecoder((c2, c3, c4), spec.width, spec.value_dim, spec.decoder_dim)
        for module in self._frozen_modules():
            module.requires_grad_(False)
        self.train()

    # --- named steps -------------------------------------------------------------------------------------

    def encode_frame(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (N,3,H,W) in [0,1] -> {"res2": (N,C2,H/4,W/4), "res3": (N,C3,H/8,W/8), "res4": (N,C4,H/16,W/16),
        "res5": (N,C5,H/32,W/32), "key": (N,Ck,H/16,W/16)} (feature sizes round up for odd H, W)."""
        features = self.backbone(images)
        features["key"] = self.key_projection(features["res4"])
        return features

    def encode_text(self, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """words (N,L,Dt) token embeddings, word_mask (N,L) bool True = real token -> (N,L,C) projected words.

        Every row needs at least one real token (attention over no words is undefined)."""
        if words.shape[-1] != self.spec.text_dim:
            raise ValueError(
                f"words have width {words.shape[-1]}, this model was built for text_dim={self.spec.text_dim}"
            )
        if not bool(word_mask.any(dim=1).all()):
            raise ValueError("word_mask has a row without any real token; every expression needs one")
        return self.text_projection(words)

    def attend_words(self, res5: torch.Tensor, text: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """res5 (N,C5,h,w), text (N,L,C) from `encode_text`, word_mask (N,L) -> text_visual (N,C,h,w)."""
        return self.cross_modal(res5, text, word_mask)

    @staticmethod
    def sentence(text: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """text (N,L,C) from `encode_text`, word_mask (N,L) -> (N,C) mean of the real tokens."""
        weights = word_mask.to(text.dtype).unsqueeze(-1)
        return (text * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def encode_memory(
        self, features: dict[str, torch.Tensor], frame: torch.Tensor, mask_prob: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """features of the frame (from `encode_frame`), frame (N,3,H,W), mask_prob (N,H,W) foreground probability
        -> (key (N,Ck,H/16,W/16), value (N,Cv,H/16,W/16)). The key is the frame's query key, reused."""
        return features["key"], self.memory_encoder(features["res4"], frame, mask_prob)

    @staticmethod
    def read_memory(query_key: torch.Tensor, memory_keys: torch.Tensor, memory_values: torch.Tensor) -> torch.Tensor:
        """query_key (N,Ck,h,w), memory_keys (N,Ck,T,h,w), memory_values (N,Cv,T,h,w) -> readout (N,Cv,h,w)."""
        return layers.read_memory(query_key, memory_keys, memory_values)

    def decode(
        self,
        features: dict[str, torch.Tensor],
        text_visual: torch.Tensor,
        readout: torch.Tensor | None,
        size: tuple[int, int],
        sentence: torch.Tensor,
    ) -> torch.Tensor:
        """features (from `encode_frame`), text_visual (N,C,h5,w5), readout (N,Cv,h4,w4) or None for a frame without
        memory (read as zeros), size (H,W), sentence (N,C) from `sentence` -> logits (N,2,H,W), class 1 = the
        referred object."""
        if readout is None:
            res4 = features["res4"]
            readout = res4.new_zeros(res4.shape[0], self.spec.value_dim, *res4.shape[-2:])
        return self.decoder(features, text_visual, readout, size, sentence)

    # --- clip training -----------------------------------------------------------------------------------

    def forward_clip(
        self,
        frames: torch.Tensor,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        first_mask: torch.Tensor | None = None,
        first_given: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Segment a clip as inference does, frame after frame: frame 0 without memory, frame t reading the
        memory of frames 0..t-1.

        frames (B,T,3,H,W) in [0,1], words (B,L,Dt), word_mask (B,L) bool True = real token,
        first_mask (B,H,W) in {0,1} or None, first_given (B,) bool or None (every row) -> logits (B,T,2,H,W).

        Memory of frame 0 is encoded with `first_mask` in the rows `first_given` names (ground truth, as the
        teacher's anchors and inference with a first-frame mask), else with its own predicted probability;
        every later frame enters memory with its
        own predicted probability, detached, so training sees the errors that propagation will feed itself
        and no gradient runs through the chain of predictions. Frame 0's logits are always the memory-less
        prediction, which the loss trains as L_first.
        """
        batch, length = frames.shape[:2]
        size = (frames.shape[-2], frames.shape[-1])
        # The backbone and cross-modal attention do not depend on memory: one batched call for all frames.
        features = self.encode_frame(frames.flatten(0, 1))
        text = self.encode_text(words, word_mask)
        sentence = self.sentence(text, word_mask)
        text_visual = self.attend_words(
            features["res5"], text.repeat_interleave(length, 0), word_mask.repeat_interleave(length, 0)
        )
        per_frame = {name: value.unflatten(0, (batch, length)) for name, value in features.items()}
        text_visual = text_visual.unflatten(0, (batch, length))
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        logits: list[torch.Tensor] = []
        for t in range(length):
            frame_features = {name: value[:, t] for name, value in per_frame.items()}
            readout = None
            if keys:
                readout = self.read_memory(frame_features["key"], torch.stack(keys, 2), torch.stack(values, 2))
            frame_logits = self.decode(frame_features, text_visual[:, t], readout, size, sentence)
            logits.append(frame_logits)
            if t == length - 1:
                break
            mask_prob = frame_logits.detach().softmax(dim=1)[:, 1]
            if t == 0 and first_mask is not None:
                given = first_mask.to(mask_prob.dtype)
                if first_given is None:
                    mask_prob = given
                else:
                    mask_prob = torch.where(first_given.view(-1, 1, 1), given, mask_prob)
            key, value = self.encode_memory(frame_features, frames[:, t], mask_prob)
            keys.append(key)
            values.append(value)
        return torch.stack(logits, dim=1)

    def forward(
        self,
        frames: torch.Tensor,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        first_mask: torch.Tensor | None = None,
        first_given: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Same as `forward_clip` (so wrappers such as DistributedDataParallel see it)."""
        return self.forward_clip(frames, words, word_mask, first_mask, first_given)

    # --- which parts train -------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> URVOS:
        """Set train/eval mode; frozen parts (see `spec.trainable`) always stay in eval mode, so their
        batch-norm statistics never move."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def _frozen_modules(self) -> list[nn.Module]:
        if self.spec.trainable == "decoder":
            return [module for name, module in self.named_children() if name != "decoder"]
        if self.spec.trainable == "all_frozen_bn":
            return [module for module in self.backbone.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
        return []
