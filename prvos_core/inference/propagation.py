"""Frame-by-frame inference: propagate a referred object's mask through a video with a bounded memory.

Two ways, sharing the model's named steps:

- `iter_propagate`: forward from frame 0, whose mask is the ground truth when one is given (as the PRVOS seed's
  inference), else the model's own memory-less prediction. Every frame then enters memory with its predicted
  probability. Memory keeps the first frame (the most reliable reference) and the `memory_size` most recent
  frames, so cost and memory use per frame stay constant however long the video.
- `AnchoredPropagation`: every frame whose mask is known (an anchor) stays in memory for the whole video, and
  the object is propagated from the anchors both ways: a backward pass (last anchor -> frame 0) and a forward
  pass (first anchor -> last frame), fused per frame by the distance to the nearest anchor on each side.

Both can blend each predicted frame with label propagation by feature matching from the same memory
(`prvos_core.inference.matching`, `matching=`), which carries an anchor's mask before any memory read is trained.

Both read frames through `EncodedFrames`: frame t on the model's device and its backbone features, encoded the
first time a pass asks. The features do not depend on the text, so the expressions of one video can share one
`EncodedFrames` (`keep=True`): each frame is then encoded once per video instead of once per expression and pass.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple

import torch

from prvos_core.inference.matching import LabelBank, Matching
from prvos_core.model.urvos import URVOS

DEFAULT_MEMORY_SIZE = 4

Entry = tuple[torch.Tensor, torch.Tensor]  # a frame's memory key (1,Ck,h,w) and value (1,Cv,h,w)


class MemoryBank:
    """Permanent entries (anchors) plus the `recent` most recent frames' ones.

    Keys (1,Ck,h,w), values (1,Cv,h,w) per frame; `stacked()` gives (1,Ck,T,h,w), (1,Cv,T,h,w), the anchors
    first in the order they were given, then the recent frames oldest first (T <= anchors + recent).
    """

    def __init__(self, recent: int, anchors: Sequence[Entry] = ()) -> None:
        if recent < 0:
            raise ValueError(f"memory_size must be >= 0, got {recent}")
        self._anchors = list(anchors)
        self._recent: deque[Entry] = deque(maxlen=recent)

    def anchor(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Keep this frame's entry for the rest of the video."""
        self._anchors.append((key, value))

    def add(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Keep this frame's entry until `recent` newer frames have come."""
        if self._recent.maxlen:
            self._recent.append((key, value))

    def __len__(self) -> int:
        return len(self._anchors) + len(self._recent)

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert len(self), "memory is read only after a frame entered it"
        entries = [*self._anchors, *self._recent]
        return torch.stack([key for key, _ in entries], 2), torch.stack([value for _, value in entries], 2)


class _Query(NamedTuple):
    """The expression as the model reads it: text (1,L,C), word_mask (1,L) bool, sentence (1,C)."""

    text: torch.Tensor
    word_mask: torch.Tensor
    sentence: torch.Tensor

    @classmethod
    def encode(cls, model: URVOS, words: torch.Tensor, word_mask: torch.Tensor, device: torch.device) -> _Query:
        word_mask = word_mask.to(device).unsqueeze(0)
        text = model.encode_text(words.to(device).unsqueeze(0), word_mask)
        return cls(text, word_mask, model.sentence(text, word_mask))


class EncodedFrames:
    """A video's frames as the propagation reads them: `frames[t]` -> (frame (1,3,H,W) on the model's device,
    its `encode_frame` features).

    frames: (T,3,H,W) in [0,1], a tensor or a view read as `frames[t:t+1]` (a lazy decoder). keep: hold every
    frame's features once computed (for several passes or expressions over the same video: an r50 at 384x640
    keeps ~30 MB per frame in float32); else each request encodes again. Encoding one frame at a time keeps
    the bits of a kept frame equal to those of a fresh one.
    """

    def __init__(self, model: URVOS, frames: torch.Tensor, keep: bool = False) -> None:
        self.model, self.frames = model, frames
        self.shape, self.ndim = frames.shape, frames.ndim
        self.device = next(model.parameters()).device
        self.kept: dict[int, tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = {} if keep else None
        self.encoded = 0  # backbone calls made, for tests and measurements

    def __len__(self) -> int:
        return self.shape[0]

    @torch.inference_mode()
    def __getitem__(self, t: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.kept is not None and t in self.kept:
            return self.kept[t]
        frame = self.frames[t : t + 1].to(self.device)
        entry = (frame, self.model.encode_frame(frame))
        self.encoded += 1
        if self.kept is not None:
            self.kept[t] = entry
        return entry


def _encoded(model: URVOS, frames: torch.Tensor | EncodedFrames) -> EncodedFrames:
    if isinstance(frames, EncodedFrames):
        if frames.model is not model:
            raise ValueError("these EncodedFrames were encoded by another model")
        return frames
    return EncodedFrames(model, frames)


def _check(model: URVOS, frames: torch.Tensor | EncodedFrames) -> None:
    if model.training:
        raise ValueError(
            "propagate needs the model in eval mode (call model.eval()); train mode moves batch-norm statistics"
        )
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (T,3,H,W), got {tuple(frames.shape)}")


def _segment(
    model: URVOS, features: dict[str, torch.Tensor], memory: MemoryBank, query: _Query, size: tuple[int, int]
) -> torch.Tensor:
    """One frame's foreground probability (1,H,W) float32 from its features, the memory and the expression."""
    readout = model.read_memory(features["key"], *memory.stacked()) if len(memory) else None
    text_visual = model.attend_words(features["res5"], query.text, query.word_mask)
    logits = model.decode(features, text_visual, readout, size, query.sentence)
    return logits.float().softmax(dim=1)[:, 1]


@torch.inference_mode()
def iter_propagate(
    model: URVOS,
    frames: torch.Tensor | EncodedFrames,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    first_mask: torch.Tensor | None = None,
    memory_size: int = DEFAULT_MEMORY_SIZE,
    matching: Matching | None = None,
) -> Iterator[torch.Tensor]:
    """Yield each frame's foreground probability in order, so a writer can stream them.

    model: in eval mode, on the caller's choice of device (frames, words and first_mask are moved to it).
    Runs under `torch.inference_mode`, entered around each step only (the decorator handles generators),
    so the consumer's own code between frames is unaffected.
    frames (T,3,H,W) in [0,1], words (L,Dt), word_mask (L,) bool True = real token, first_mask (H,W) in {0,1}
    or None, memory_size: recent frames kept besides the first, matching: blend each later frame with label
    propagation from first_mask (None, weight 0 or no first_mask: the model alone) -> yields T tensors (H,W) float32 in [0,1] on the model's
    device (frame 0 is `first_mask` itself when given).
    """
    _check(model, frames)
    encoded = _encoded(model, frames)
    device = encoded.device
    size = (frames.shape[-2], frames.shape[-1])
    memory = MemoryBank(memory_size)
    # Matching carries a known mask; from the model's own first guess it would only repeat that guess.
    labels = _label_bank(memory_size, matching) if first_mask is not None else None
    query = _Query.encode(model, words, word_mask, device)
    for t in range(frames.shape[0]):
        frame, features = encoded[t]
        if t == 0 and first_mask is not None:
            prob = first_mask.to(device=device, dtype=torch.float32).unsqueeze(0)
        else:
            prob = _segment(model, features, memory, query, size)
            if labels is not None:
                prob = labels.blend(prob, features)
        entry = model.encode_memory(features, frame, prob)
        if t == 0:
            memory.anchor(*entry)
        else:
            memory.add(*entry)
        if labels is not None:
            (labels.anchor if t == 0 else labels.add)(features, prob)
        yield prob[0]


def _label_bank(memory_size: int, matching: Matching | None) -> LabelBank | None:
    return LabelBank(memory_size, matching) if matching is not None and matching.weight > 0 else None


def propagate(
    model: URVOS,
    frames: torch.Tensor | EncodedFrames,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    first_mask: torch.Tensor | None = None,
    memory_size: int = DEFAULT_MEMORY_SIZE,
    matching: Matching | None = None,
) -> torch.Tensor:
    """All frames at once: same arguments as `iter_propagate` -> prob (T,H,W) float32 foreground probability."""
    return torch.stack(list(iter_propagate(model, frames, words, word_mask, first_mask, memory_size, matching)))


class AnchoredPropagation:
    """Propagation from every frame whose mask is known (an anchor), forward and backward in time.

    model: in eval mode (frames, words and masks are moved to its device). frames (T,3,H,W) in [0,1], read one
    frame at a time as `frames[t:t+1]` (a lazy view works; frames between the anchors are read by both passes,
    so a view that decodes should keep them), or an `EncodedFrames` shared with other expressions, words (L,Dt), word_mask (L,) bool True = real token, anchors
    {t: mask (H,W) in {0,1}} (at least one), memory_size: frames of the current pass kept in memory besides
    every anchor. Each anchor is encoded once, at construction.

    Iterating yields T tensors (H,W) float32 in [0,1] on the model's device, in frame order: an anchor's mask
    itself; before the first anchor the backward pass; after the last one the forward pass; in between
    (d_b p_fwd + d_f p_bwd) / (d_f + d_b), d_f and d_b the distances to the nearest anchor before and after, so
    the pass that started closer weighs more. The backward pass runs first, into memory (last anchor + 1 frames),
    then the forward pass streams. With one anchor at frame 0 the output is `iter_propagate`'s from that mask,
    bit for bit.
    """

    @torch.inference_mode()
    def __init__(
        self,
        model: URVOS,
        frames: torch.Tensor | EncodedFrames,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        anchors: Mapping[int, torch.Tensor],
        memory_size: int = DEFAULT_MEMORY_SIZE,
        matching: Matching | None = None,
    ) -> None:
        _check(model, frames)
        length = frames.shape[0]
        if not anchors or not all(0 <= t < length for t in anchors):
            raise ValueError(f"anchors must name at least one frame, each in 0..{length - 1}; got {sorted(anchors)}")
        self.model, self.memory_size, self.matching = model, memory_size, matching
        # Frames between the anchors are read by both passes: their features are kept for the second one.
        self.frames = frames if isinstance(frames, EncodedFrames) else EncodedFrames(model, frames, keep=True)
        _encoded(model, self.frames)
        self.device = self.frames.device
        self.size = (frames.shape[-2], frames.shape[-1])
        self.query = _Query.encode(model, words, word_mask, self.device)
        self.masks = {t: anchors[t].to(device=self.device, dtype=torch.float32) for t in sorted(anchors)}
        self.entries = []
        for t, mask in self.masks.items():
            frame, features = self.frames[t]
            self.entries.append(model.encode_memory(features, frame, mask.unsqueeze(0)))

    @torch.inference_mode()
    def run(self, order: Iterable[int]) -> Iterator[tuple[int, torch.Tensor]]:
        """One pass over the frames in `order`: (t, prob (H,W) float32), an anchor's mask itself, else the model's
        prediction with every anchor and this pass's `memory_size` latest predicted frames in memory."""
        memory = MemoryBank(self.memory_size, self.entries)
        labels = _label_bank(self.memory_size, self.matching)
        if labels is not None:
            for t, mask in self.masks.items():
                labels.anchor(self.frames[t][1], mask.unsqueeze(0))
        for t in order:
            if t in self.masks:
                yield t, self.masks[t]
                continue
            frame, features = self.frames[t]
            prob = _segment(self.model, features, memory, self.query, self.size)
            if labels is not None:
                prob = labels.blend(prob, features)
                labels.add(features, prob)
            memory.add(*self.model.encode_memory(features, frame, prob))
            yield t, prob[0]

    @torch.inference_mode()
    def __iter__(self) -> Iterator[torch.Tensor]:
        positions = list(self.masks)
        first, last = positions[0], positions[-1]
        backward = dict(self.run(range(last, -1, -1)))
        for t in range(first):
            yield backward.pop(t)
        for t, forward in self.run(range(first, self.frames.shape[0])):
            if t in self.masks or t > last:
                yield forward
                continue
            after = bisect.bisect_left(positions, t)
            d_forward, d_backward = t - positions[after - 1], positions[after] - t
            yield (d_backward * forward + d_forward * backward.pop(t)) / (d_forward + d_backward)
