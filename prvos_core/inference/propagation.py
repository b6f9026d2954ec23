"""Frame-by-frame inference: propagate a referred object's mask through a video with a bounded memory.

Frame 0 is the ground-truth mask when one is given (as the PRVOS seed's inference), else the model's own
memory-less prediction. Every frame then enters memory with its predicted probability. Memory keeps the
first frame (the most reliable reference) and the `memory_size` most recent frames, so cost and memory use
per frame stay constant however long the video.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import torch

from prvos_core.model.urvos import URVOS

DEFAULT_MEMORY_SIZE = 4


class MemoryBank:
    """The first frame's (key, value) plus the `recent` most recent frames' ones.

    Keys (1,Ck,h,w), values (1,Cv,h,w) per frame; `stacked()` gives (1,Ck,T,h,w), (1,Cv,T,h,w) with
    T <= 1 + recent.
    """

    def __init__(self, recent: int) -> None:
        if recent < 0:
            raise ValueError(f"memory_size must be >= 0, got {recent}")
        self._first: tuple[torch.Tensor, torch.Tensor] | None = None
        self._recent: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=recent)

    def add(self, key: torch.Tensor, value: torch.Tensor) -> None:
        if self._first is None:
            self._first = (key, value)
        elif self._recent.maxlen:
            self._recent.append((key, value))

    def __len__(self) -> int:
        return (self._first is not None) + len(self._recent)

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._first is not None, "memory is read only after the first frame entered it"
        entries = [self._first, *self._recent]
        return torch.stack([key for key, _ in entries], 2), torch.stack([value for _, value in entries], 2)


@torch.inference_mode()
def iter_propagate(
    model: URVOS,
    frames: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    first_mask: torch.Tensor | None = None,
    memory_size: int = DEFAULT_MEMORY_SIZE,
) -> Iterator[torch.Tensor]:
    """Yield each frame's foreground probability in order, so a writer can stream them.

    model: in eval mode, on the caller's choice of device (frames, words and first_mask are moved to it).
    Runs under `torch.inference_mode`, entered around each step only (the decorator handles generators),
    so the consumer's own code between frames is unaffected.
    frames (T,3,H,W) in [0,1], words (L,Dt), word_mask (L,) bool True = real token, first_mask (H,W) in {0,1}
    or None, memory_size: recent frames kept besides the first -> yields T tensors (H,W) float32 in [0,1]
    on the model's device (frame 0 is `first_mask` itself when given).
    """
    if model.training:
        raise ValueError(
            "propagate needs the model in eval mode (call model.eval()); train mode moves batch-norm statistics"
        )
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (T,3,H,W), got {tuple(frames.shape)}")
    device = next(model.parameters()).device
    size = (frames.shape[-2], frames.shape[-1])
    memory = MemoryBank(memory_size)
    word_mask = word_mask.to(device).unsqueeze(0)
    text = model.encode_text(words.to(device).unsqueeze(0), word_mask)
    sentence = model.sentence(text, word_mask)
    for t in range(frames.shape[0]):
        frame = frames[t : t + 1].to(device)
        features = model.encode_frame(frame)
        if t == 0 and first_mask is not None:
            prob = first_mask.to(device=device, dtype=torch.float32).unsqueeze(0)
        else:
            readout = None
            if len(memory):
                readout = model.read_memory(features["key"], *memory.stacked())
            text_visual = model.attend_words(features["res5"], text, word_mask)
            logits = model.decode(features, text_visual, readout, size, sentence)
            prob = logits.float().softmax(dim=1)[:, 1]
        memory.add(*model.encode_memory(features, frame, prob))
        yield prob[0]


def propagate(
    model: URVOS,
    frames: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    first_mask: torch.Tensor | None = None,
    memory_size: int = DEFAULT_MEMORY_SIZE,
) -> torch.Tensor:
    """All frames at once: same arguments as `iter_propagate` -> prob (T,H,W) float32 foreground probability."""
    return torch.stack(list(iter_propagate(model, frames, words, word_mask, first_mask, memory_size)))
