"""Running a trained model over one expression's video: the code shared by teacher inference and evaluation.

Frames are decoded and resized lazily, one at a time, and the model propagates frame by frame from the first
frame (its ground-truth mask when asked and available, else the model's own prediction).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch

from prvos_core.frames import decode_frame, read_object_mask, resize_frame, resize_map
from prvos_core.layout import SplitPaths
from prvos_core.manifest import Expression, Video
from prvos_core.model import URVOS, iter_propagate, load_checkpoint


def choose_device(gpus: float) -> torch.device:
    return torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")


def load_predictor(checkpoint: str, weights: Literal["ema", "student"], device: torch.device) -> URVOS:
    """The model to run: the EMA teacher's weights when asked and saved, else the student's; in eval mode."""
    loaded = load_checkpoint(checkpoint, device=device)
    model = loaded.ema.model if weights == "ema" and loaded.ema is not None else loaded.model
    return model.eval()


class _LazyFrames:
    """A (T, 3, h, w) float view of a video that decodes a frame only when the model asks for it."""

    def __init__(self, paths: list[str], size: tuple[int, int]) -> None:
        self.paths, self.size = paths, size
        self.shape = torch.Size((len(paths), 3, *size))
        self.ndim = 4

    def __getitem__(self, item: slice) -> torch.Tensor:
        frames = [resize_frame(decode_frame(path), self.size) for path in self.paths[item]]
        return torch.from_numpy(np.stack(frames)).float().div_(255)


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

    words (L, D), word_mask (L,) bool: the expression's cached token features.
    """
    paths = SplitPaths(Path(video.dataset_root), video.split)
    frame_paths = [str(paths.frame_path(video.video_id, frame)) for frame in video.frame_ids]
    first_mask = None
    first = video.frame_ids[0]
    if first_mask_from_gt and first in expression.gt_frames and expression.object_id:
        mask = read_object_mask(str(paths.mask_path(video.video_id, first)), expression.object_id)
        first_mask = torch.from_numpy(resize_map(mask, input_size))
    frames = _LazyFrames(frame_paths, input_size)
    propagation = iter_propagate(model, frames, words, word_mask, first_mask, memory_frames)
    for index, prob in enumerate(propagation):
        yield index, prob.float().cpu().numpy()


def upsample_prob(prob: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) probability -> (H, W) at the original frame size (bilinear)."""
    return cv2.resize(prob, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
