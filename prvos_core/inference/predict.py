"""Running a trained model over one expression's video: the code shared by teacher inference and evaluation.

Frames are decoded and resized lazily, one at a time, and the model propagates frame by frame from the first
frame (its ground-truth mask when asked and available, else the model's own prediction). Nothing here is
random and the model runs in eval mode, so the same checkpoint, inputs, device and thread count give the
same probabilities bit for bit. `Predictor` bundles what a worker of teacher inference or evaluation holds (the
weights, the text cache in memory, the split's records) and runs without Ray.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch

from prvos_core import storage
from prvos_core.data.frames import decode_frame, decode_reduction, read_object_mask, resize_frame, resize_map
from prvos_core.data.layout import SplitPaths
from prvos_core.data.manifest import Expression, Manifest, Video, read_manifest
from prvos_core.errors import DataError, UserError
from prvos_core.inference.propagation import iter_propagate
from prvos_core.model.checkpoint import EMA_FILE, MODEL_FILE, load_checkpoint, read_checkpoint_meta
from prvos_core.model.urvos import URVOS
from prvos_core.text.cache import TextCache, TextNotCachedError

Weights = Literal["ema", "student"]


def choose_device(gpus: float) -> torch.device:
    """'cuda' when the caller was given GPUs and one is visible, else 'cpu'."""
    return torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; 'cpu' and 'cuda' as given (cuda must exist)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise UserError(f"device {name!r} is unknown; use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for but no GPU is visible; use --device auto or cpu")
    return name


def load_predictor(checkpoint: str, weights: Weights, device: torch.device) -> URVOS:
    """The model to run: the EMA teacher's weights when asked and saved, else the student's; in eval mode."""
    loaded = load_checkpoint(checkpoint, device=device)
    model = loaded.ema.model if weights == "ema" and loaded.ema is not None else loaded.model
    return model.eval()


def predictor_identity(checkpoint: str, weights: Weights) -> str:
    """Names the weights `load_predictor` would run: '<checkpoint>#<ema|student>:<sha256 prefix of the file>'.

    The content hash tells a retrained checkpoint written to the same folder apart from the old one.
    Raises CheckpointError (one line) when `checkpoint` is not a checkpoint folder.
    """
    read_checkpoint_meta(checkpoint)
    used = "ema" if weights == "ema" and storage.exists(storage.join(checkpoint, EMA_FILE)) else "student"
    fs, path = storage.filesystem(storage.join(checkpoint, EMA_FILE if used == "ema" else MODEL_FILE))
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"{checkpoint}#{used}:{digest.hexdigest()[:16]}"


class _LazyFrames:
    """A (T, 3, h, w) float view of a video that decodes a frame only when the model asks for it."""

    def __init__(self, paths: list[str], size: tuple[int, int], frame_size: tuple[int, int]) -> None:
        self.paths, self.size = paths, size
        self.reduce = decode_reduction(frame_size, size)  # decode at the smallest scale that covers `size`
        self.shape = torch.Size((len(paths), 3, *size))
        self.ndim = 4

    def __getitem__(self, item: slice) -> torch.Tensor:
        frames = [resize_frame(decode_frame(path, self.reduce), self.size) for path in self.paths[item]]
        return torch.from_numpy(np.stack(frames)).float().div_(255)


def _first_frame_mask(video: Video, expression: Expression, input_size: tuple[int, int]) -> torch.Tensor | None:
    """The ground-truth mask (h, w) float {0, 1} of the video's first frame at `input_size` (nearest), or None
    when that frame has no mask of this expression's object."""
    first = video.frame_ids[0]
    if first not in expression.gt_frames or not expression.object_id:
        return None
    paths = video.paths
    mask = read_object_mask(str(paths.mask_path(video.video_id, first)), expression.object_id)
    return torch.from_numpy(resize_map(mask, input_size)).float()


def predict_expression(
    model: URVOS,
    video: Video,
    expression: Expression,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    input_size: tuple[int, int],
    *,
    first_mask_from_gt: bool,
    memory_frames: int,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame index, foreground probability (h, w) float32 at `input_size`) for every frame of the video.

    model: in eval mode. words (L, D), word_mask (L,) bool: the expression's cached token features.
    first_mask_from_gt: start from the first frame's ground-truth mask when it has one (frame 0 is then that
    mask itself); else the model finds the object from the text alone.
    """
    paths = video.paths
    frame_uris = [str(paths.frame_path(video.video_id, frame)) for frame in video.frame_ids]
    frames = _LazyFrames(frame_uris, input_size, (video.height, video.width))
    first_mask = _first_frame_mask(video, expression, input_size) if first_mask_from_gt else None
    propagation = iter_propagate(model, frames, words, word_mask, first_mask, memory_frames)
    for index, prob in enumerate(propagation):
        yield index, prob.float().cpu().numpy()


def upsample_prob(prob: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) float32 probability -> (H, W) at the original frame size `size` (bilinear)."""
    return cv2.resize(prob, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def check_prediction_inputs(
    manifest_dir: str, split: str, checkpoint: str, text_cache: str, text_identity: str
) -> tuple[Manifest, list[Expression]]:
    """The manifest and the split's expressions, once the checks a fleet of predictors needs before it starts
    have passed, each failing in one line: the split has expressions, the checkpoint is a checkpoint, every
    expression's text is cached."""
    manifest = read_manifest(manifest_dir)
    expressions = manifest.split_expressions(split)
    if not expressions:
        raise DataError(f"split {split!r} has no expressions in the manifest {manifest_dir}")
    read_checkpoint_meta(checkpoint)
    cache = TextCache(text_cache, text_identity)
    missing = sorted({e.text for e in expressions if e.text not in cache})
    if missing:
        raise TextNotCachedError(missing[0], len(missing), cache.location)
    return manifest, expressions


class Predictor:
    """A checkpoint ready to label a split's expressions: its weights on a device (in eval mode), the text cache
    in memory and the manifest's records of the split. Each actor of the infer and evaluate pools holds one."""

    def __init__(
        self,
        checkpoint: str,
        weights: Weights,
        text_cache: str,
        text_identity: str,
        manifest_dir: str,
        split: str,
        *,
        device: torch.device | None = None,
        memory_frames: int = 4,
    ) -> None:
        self.model = load_predictor(checkpoint, weights, device or torch.device("cpu"))
        self.text = TextCache(text_cache, text_identity).load_all()
        manifest = read_manifest(manifest_dir)
        self.expressions = {e.expression_id: e for e in manifest.split_expressions(split)}
        self.manifest = manifest
        self.memory_frames = memory_frames

    def records(self, expression_id: str) -> tuple[Expression, Video]:
        """The expression of the split and its video."""
        expression = self.expressions[expression_id]
        return expression, self.manifest.video_of(expression)

    def predict(
        self, expression: Expression, video: Video, input_size: tuple[int, int], *, first_mask_from_gt: bool
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(frame index, foreground probability (h, w) float32 at `input_size`) for every frame of the video,
        from the expression's cached token features (`predict_expression`)."""
        words, word_mask = self.text.lookup([expression.text])
        return predict_expression(
            self.model,
            video,
            expression,
            words[0],
            word_mask[0],
            input_size,
            first_mask_from_gt=first_mask_from_gt,
            memory_frames=self.memory_frames,
        )
