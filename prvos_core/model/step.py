"""How a training step uses the device: precision, memory format, compilation, the optimizer step.

The train stage's choices (`train.precision`, `train.channels_last`, `train.compile`) resolved here, free of Ray,
so that the stage and the CPU tests run the same code. The student stays one plain `URVOS` through all of them:
`Module.compile()` compiles in place (no `_orig_mod.` wrapper), so its state_dict, its checkpoint and its EMA
teacher keep their keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

PRECISIONS = ("fp32", "auto", "bf16", "fp16")


@dataclass(frozen=True)
class Precision:
    """What `train.precision` means on one device."""

    dtype: torch.dtype | None  # autocast to this dtype; None: plain fp32, no autocast
    scaled: bool  # fp16: the loss is scaled (GradScaler) so that small gradients do not flush to zero

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def resolve_precision(name: str, device: torch.device | str) -> Precision:
    """`fp32`, `bf16`, `fp16` as named on any device (CPU autocast runs bf16 and fp16 too); `auto`: bf16 on a CUDA
    device that has it, else fp16 with a GradScaler on CUDA, fp32 elsewhere."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")
    device = torch.device(device)
    if name == "auto":
        if device.type != "cuda":
            name = "fp32"
        else:
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    return Precision(dtype, scaled=dtype is torch.float16)


def grad_scaler(device: torch.device | str, precision: Precision) -> torch.amp.GradScaler:
    """The loss scaler of an fp16 step; disabled otherwise, when `optimizer_step` passes through it unchanged."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision.scaled)


def prepare_student(
    model: nn.Module, device: torch.device | str, *, channels_last: bool, compile: bool, backend: str = "inductor"
) -> nn.Module:
    """Move the student to `device`, in place: channels_last converts its 4-D weights (convolutions then run and
    answer in channels_last, which tensor cores want); compile compiles its forward in place. Call it before the
    DDP wrap (PyTorch's advice: compile the inner module, Dynamo does not trace DDP's wrapper well); an
    `EmaTeacher` deep-copied from the compiled student is not compiled (`Module.__getstate__` drops it).
    backend: torch.compile's (tests trace with "aot_eager": the same graph capture without inductor's code
    generation, which takes minutes on a CPU)."""
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        model.compile(backend=backend)
    return model


def model_frames(frames: torch.Tensor, device: torch.device | str, *, channels_last: bool) -> torch.Tensor:
    """A uint8 frame batch (B,T,3,H,W) -> float32 in [0,1] on `device`. channels_last: each pixel's 3 channels
    adjacent in memory, so that `forward_clip`'s (B*T,3,H,W) view of it is `torch.channels_last` (the layout has no
    5-D name for (B,T,C,H,W)); the layout change costs nothing, it is the same copy as the conversion to float."""
    frames = frames.to(device, non_blocking=True)
    if not channels_last:
        return frames.float().div_(255)
    batch, length, channels, height, width = frames.shape
    laid_out = torch.empty((batch, length, height, width, channels), dtype=torch.float32, device=frames.device)
    return laid_out.permute(0, 1, 4, 2, 3).copy_(frames).div_(255)


def forward(
    model: nn.Module,
    frames: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    precision: Precision,
    first_mask: torch.Tensor | None = None,
    first_given: torch.Tensor | None = None,
) -> torch.Tensor:
    """The model's clip logits (B,T,2,H,W), computed under autocast at `precision`, returned in float32 (the loss
    is computed in full precision). first_mask, first_given: frame 0's memory mask and the rows that take it
    (`URVOS.forward_clip`)."""
    with torch.autocast(frames.device.type, dtype=precision.dtype, enabled=precision.dtype is not None):
        logits = model(frames, words, word_mask, first_mask, first_given)
    return logits.float()


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Backward and step. With an enabled scaler (fp16) the loss is scaled, the gradients unscaled before the step,
    and a step whose gradients overflowed is skipped (the scale then halves); disabled, a plain step."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
