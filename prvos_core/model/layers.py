"""The parts of the URVOS-style model between backbone and logits: cross-modal attention, memory encoding and
reading, and the refine decoder.

Where this is cheaper than the PRVOS seed (on purpose; a later benchmark measures it):
- Cross-modal attention: pixels of res5 attend to the words (one multi-head cross-attention, cost
  O(pixels x words x width)) after a 1x1 conv to the model width, instead of attention over every
  (pixel, word) pair with a 3x3 conv at full res5 width.
- Decoder: residual conv blocks only (as STM's refine modules), without the seed's self-attention in each
  refine block, whose cost grows with the square of the pixel count at res3/res2.
- Memory: the value comes from the frame's own res4 plus a small strided conv stack over (frame, mask),
  instead of a second ResNet trunk; the memory key is the frame's query key (as XMem/Cutie), so a frame's
  key is computed once and reused when it enters memory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ResBlock(nn.Module):
    """Pre-activation residual block of two 3x3 convs (as STM's refine modules): (N,C,H,W) -> (N,C,H,W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class CrossModalAttention(nn.Module):
    """res5 pixels attend to the projected words; the result mixes each pixel's visual feature with its word
    context (elementwise product, so a pixel that matches the expression stands out).

    res5 (N,Cin,h,w), words (N,L,C), word_mask (N,L) bool True = real token -> (N,C,h,w).
    """

    def __init__(self, in_channels: int, width: int, heads: int) -> None:
        super().__init__()
        self.visual = nn.Conv2d(in_channels, width, 1)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mix = nn.Linear(width, width)
        self.norm1 = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width))
        self.norm2 = nn.LayerNorm(width)

    def forward(self, res5: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        visual = self.visual(res5)
        n, c, h, w = visual.shape
        pixels = visual.flatten(2).transpose(1, 2)  # (N, h*w, C)
        context, _ = self.attention(pixels, words, words, key_padding_mask=~word_mask, need_weights=False)
        x = self.norm1(pixels + self.mix(pixels * context))
        x = self.norm2(x + self.ffn(x))
        return x.transpose(1, 2).reshape(n, c, h, w)


class MemoryValueEncoder(nn.Module):
    """Memory value of a frame from its res4, the frame and its mask probability.

    res4 (N,C4,h,w), frame (N,3,H,W) in [0,1], mask_prob (N,H,W) in [0,1] -> value (N,Cv,h,w).
    """

    def __init__(self, res4_channels: int, value_dim: int, mask_dim: int) -> None:
        super().__init__()
        # Four stride-2 convs bring (frame, mask) from H to H/16, the res4 grid.
        widths = (4, mask_dim // 4, mask_dim // 2, mask_dim, mask_dim)
        layers: list[nn.Module] = []
        for index, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1))
            if index < len(widths) - 2:
                layers.append(nn.ReLU())
        self.mask = nn.Sequential(*layers)
        # Both inputs are normalised before they meet: res4 of a pretrained backbone is ~400x larger than what four
        # freshly initialised convs make of the mask, and a plain concatenation left the value (and so every
        # memory read) blind to the mask: a ground-truth first frame changed later predictions by ~1e-5.
        self.res4_norm = nn.GroupNorm(1, res4_channels)
        self.mask_norm = nn.GroupNorm(1, mask_dim)
        self.fuse = nn.Conv2d(res4_channels + mask_dim, value_dim, 1)
        self.block = ResBlock(value_dim)

    def forward(self, res4: torch.Tensor, frame: torch.Tensor, mask_prob: torch.Tensor) -> torch.Tensor:
        mask_features = self.mask(torch.cat([frame, mask_prob.unsqueeze(1).to(frame.dtype)], dim=1))
        if mask_features.shape[-2:] != res4.shape[-2:]:
            # Sizes that are not multiples of 16 round differently in the two paths.
            mask_features = F.interpolate(mask_features, size=res4.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(self.fuse(torch.cat([self.res4_norm(res4), self.mask_norm(mask_features)], dim=1)))


def read_memory(query_key: torch.Tensor, memory_keys: torch.Tensor, memory_values: torch.Tensor) -> torch.Tensor:
    """Space-time memory read (STM): each query position takes a softmax(dot product / sqrt(Ck))-weighted sum of
    the values at every position of every memory frame.

    query_key (N,Ck,h,w), memory_keys (N,Ck,T,h',w'), memory_values (N,Cv,T,h',w') -> readout (N,Cv,h,w).
    """
    n, ck, h, w = query_key.shape
    query = query_key.flatten(2).transpose(1, 2).unsqueeze(1)  # (N, 1, h*w, Ck)
    keys = memory_keys.flatten(2).transpose(1, 2).unsqueeze(1)  # (N, 1, T*h'*w', Ck)
    values = memory_values.flatten(2).transpose(1, 2).unsqueeze(1)  # (N, 1, T*h'*w', Cv)
    readout = F.scaled_dot_product_attention(query, keys, values, scale=1.0 / math.sqrt(ck))
    return readout.squeeze(1).transpose(1, 2).reshape(n, -1, h, w)


class _Refine(nn.Module):
    """One decoder step (STM's Refine): skip features of a finer level + the upsampled coarser result."""

    def __init__(self, skip_channels: int, channels: int) -> None:
        super().__init__()
        self.skip = nn.Conv2d(skip_channels, channels, 3, padding=1)
        self.skip_block = ResBlock(channels)
        self.block = ResBlock(channels)

    def forward(self, skip: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        upsampled = F.interpolate(coarse, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(self.skip_block(self.skip(skip)) + upsampled)


class RefineDecoder(nn.Module):
    """res4 (+ memory readout + cross-modal res5) -> res3 -> res2 -> 2-class logits at input resolution, each
    level modulated by the sentence (FiLM: x * (1 + gamma) + beta, gamma and beta from the sentence vector).

    The cross-modal res5 map is coarse (2 x 2 for a 64-pixel frame), too coarse to tell two nearby objects
    apart; the sentence modulation lets the finer levels select by what the words say (colour, shape, size).
    It starts as the identity (zero-initialised), so the decoder begins as the plain STM refine decoder.

    features {"res2": (N,C2,H/4,W/4), "res3": (N,C3,H/8,W/8), "res4": (N,C4,H/16,W/16)},
    text_visual (N,C,H/32,W/32), readout (N,Cv,H/16,W/16), sentence (N,C) -> logits (N,2,H,W).
    """

    def __init__(self, channels: tuple[int, int, int], width: int, value_dim: int, decoder_dim: int) -> None:
        super().__init__()
        c2, c3, c4 = channels
        self.fuse4 = nn.Conv2d(c4 + value_dim + width, decoder_dim, 1)
        self.block4 = ResBlock(decoder_dim)
        self.refine3 = _Refine(c3, decoder_dim)
        self.refine2 = _Refine(c2, decoder_dim)
        self.predict = nn.Conv2d(decoder_dim, 2, 3, padding=1)
        self.film = nn.Linear(width, 3 * 2 * decoder_dim)  # (gamma, beta) for x4, x3, x2
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(
        self,
        features: dict[str, torch.Tensor],
        text_visual: torch.Tensor,
        readout: torch.Tensor,
        size: tuple[int, int],
        sentence: torch.Tensor,
    ) -> torch.Tensor:
        res4 = features["res4"]
        text_up = F.interpolate(text_visual, size=res4.shape[-2:], mode="bilinear", align_corners=False)
        film = self.film(sentence).to(res4.dtype)[:, :, None, None].chunk(6, dim=1)
        x4 = self.block4(self.fuse4(torch.cat([res4, readout, text_up], dim=1)))
        x4 = x4 * (1 + film[0]) + film[1]
        x3 = self.refine3(features["res3"], x4) * (1 + film[2]) + film[3]
        x2 = self.refine2(features["res2"], x3) * (1 + film[4]) + film[5]
        logits = self.predict(F.relu(x2))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
