"""Running a trained model over one expression's video: the code shared by teacher inference and evaluation.

Frames are decoded and resized lazily, one at a time, and the model propagates frame by frame: evaluation from
the first frame (its ground-truth mask when asked and available, else the model's own prediction), the teacher
from every ground-truth frame of the expression both ways, optionally averaged with the mirrored video's
prediction (flip test-time augmentation). Nothing here is random and the model runs in eval mode, so the same
checkpoint, inputs, device and thread count give the same probabilities bit for bit. `Predictor` bundles what a
worker of teacher inference or evaluation holds (the weights, the text cache in memory, the split's records) and
runs without Ray.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterator
from typing import Literal

import cv2
import numpy as np
import torch

from prvos_core import storage
from prvos_core.data.frame_store import FrameReader
from prvos_core.data.frames import decode_frame, decode_reduction, resize_frame, resize_map
from prvos_core.data.manifest import Expression, Manifest, Video, read_manifest
from prvos_core.data.object_masks import ground_truth_mask
from prvos_core.errors import DataError, UserError
from prvos_core.inference.matching import Matching
from prvos_core.inference.propagation import AnchoredPropagation, EncodedFrames, iter_propagate
from prvos_core.model.checkpoint import EMA_FILE, MODEL_FILE, load_checkpoint, read_checkpoint_meta
from prvos_core.model.urvos import URVOS
from prvos_core.text.cache import TextCache, TextNotCachedError

Weights = Literal["ema", "student"]
Anchors = Literal["all", "first"]  # which ground-truth frames the propagation starts from (`predict_expression`)


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
    """A (T, 3, h, w) float view of a video that decodes a frame only when the model asks for it.

    keep: hold each decoded frame (uint8 at `size`) for the view's lifetime, for propagations that read frames
    more than once (both directions, the flipped video); mirrored views share it (`mirrored`).
    stored: read the frames from the frames stage's store (`FrameReader`, resized to `size`) instead of
    decoding `paths`.
    """

    def __init__(
        self,
        paths: list[str],
        size: tuple[int, int],
        frame_size: tuple[int, int],
        keep: bool = False,
        stored: tuple[FrameReader, Video] | None = None,
    ) -> None:
        self.paths, self.size, self.stored = paths, size, stored
        self.reduce = decode_reduction(frame_size, size)  # decode at the smallest scale that covers `size`
        self.shape = torch.Size((len(paths), 3, *size))
        self.ndim = 4
        self.kept: dict[int, np.ndarray] | None = {} if keep else None
        self.flip = False

    def mirrored(self) -> _LazyFrames:
        """The horizontally flipped video, decoded through the same kept frames."""
        view = copy.copy(self)
        view.flip = True
        return view

    def __getitem__(self, item: slice) -> torch.Tensor:
        frames = torch.from_numpy(np.stack([self._frame(t) for t in range(len(self.paths))[item]]))
        frames = frames.float().div_(255)
        return frames.flip(-1) if self.flip else frames

    def _frame(self, t: int) -> np.ndarray:
        if self.kept is not None and t in self.kept:
            return self.kept[t]
        if self.stored is not None:
            reader, video = self.stored
            frame = reader.frame(video, t, self.size)
        else:
            frame = resize_frame(decode_frame(self.paths[t], self.reduce), self.size)
        if self.kept is not None:
            self.kept[t] = frame
        return frame


def _anchor_masks(
    video: Video, expression: Expression, input_size: tuple[int, int], anchors: Anchors
) -> dict[int, torch.Tensor]:
    """Frame index -> ground-truth mask (h, w) float {0, 1} at `input_size` (nearest) of the frames the
    propagation starts from: every frame with a mask of this expression's object ("all"), or the first frame
    when it has one ("first"). Empty when no object is named or the video is unlabelled. Masks the label regime
    hides are not in `expression.gt_frames`, so they are never read here."""
    if not (expression.object_id and video.labelled) and not expression.reviewed_frames:
        return {}
    gt = set(expression.gt_frames)
    candidates = video.frame_ids if anchors == "all" else video.frame_ids[:1]
    masks = {}
    for t, frame in enumerate(candidates):
        if frame in gt:
            mask = ground_truth_mask(expression, video, frame)
            masks[t] = torch.from_numpy(resize_map(mask, input_size)).float()
    return masks


class VideoFrames:
    """One video at the model's input size, shared by every expression of it: each frame is decoded once (kept as
    uint8; read from the frames stage's store when given one, else from its JPEG) and encoded by the backbone once
    per view (plain, mirrored), the features kept until the video is done. Only the text-dependent steps (word
    attention, memory, decoder) then run per expression."""

    def __init__(
        self, model: URVOS, video: Video, input_size: tuple[int, int], frame_store: FrameReader | None = None
    ) -> None:
        paths = video.paths
        uris = [str(paths.frame_path(video.video_id, frame)) for frame in video.frame_ids]
        self.model, self.video_id, self.input_size = model, video.video_id, input_size
        stored = (frame_store, video) if frame_store is not None else None
        self.decoded = _LazyFrames(uris, input_size, (video.height, video.width), keep=True, stored=stored)
        self._views: dict[bool, EncodedFrames] = {}

    def view(self, flip: bool = False) -> EncodedFrames:
        """The video (or its mirror image) as the propagation reads it."""
        if flip not in self._views:
            frames = self.decoded.mirrored() if flip else self.decoded
            self._views[flip] = EncodedFrames(self.model, frames, keep=True)
        return self._views[flip]

    @property
    def encoded(self) -> int:
        """Backbone calls made so far over both views."""
        return sum(view.encoded for view in self._views.values())


def _anchored(masks: dict[int, torch.Tensor]) -> bool:
    """Whether the propagation goes both ways: not with no mask or a mask of frame 0 only, which is the forward
    propagation from frame 0 (evaluation's, and the seed's; `AnchoredPropagation` would give the same bits)."""
    return not masks.keys() <= {0}


def _predictions(
    model: URVOS,
    frames: VideoFrames,
    flip: bool,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    masks: dict[int, torch.Tensor],
    memory_frames: int,
    matching: Matching | None = None,
) -> Iterator[torch.Tensor]:
    """Each frame's foreground probability (h, w), in order; of the mirrored video with `flip` (its masks
    flipped in, its predictions flipped back)."""
    if flip:
        masks = {t: mask.flip(-1) for t, mask in masks.items()}
    view = frames.view(flip)
    if _anchored(masks):
        propagation = iter(AnchoredPropagation(model, view, words, word_mask, masks, memory_frames, matching))
    else:
        propagation = iter_propagate(model, view, words, word_mask, masks.get(0), memory_frames, matching)
    for prob in propagation:
        yield prob.flip(-1) if flip else prob


_SIDE_WORDS = re.compile(r"\b(left|right|leftmost|rightmost)\b", re.IGNORECASE)


def names_a_side(text: str) -> bool:
    """Whether an expression says left or right (word match): the mirrored video contradicts it."""
    return _SIDE_WORDS.search(text) is not None


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
    anchors: Anchors = "first",
    flip: bool = False,
    frames: VideoFrames | None = None,
    matching: Matching | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame index, foreground probability (h, w) float32 at `input_size`) for every frame of the video.

    model: in eval mode. words (L, D), word_mask (L,) bool: the expression's cached token features.
    first_mask_from_gt: start from ground truth where the expression has it (a ground-truth frame's output is
    then its mask itself); else the model finds the object from the text alone. anchors "first": forward from
    frame 0, from its ground-truth mask when it has one (evaluation's protocol); "all": every ground-truth frame
    is an anchor in memory and the object is propagated from them both ways (`AnchoredPropagation`).
    flip: horizontal-flip test-time augmentation, the mean of the video's and the mirrored video's prediction
    (flipped back); not for an expression that names a side (`names_a_side`), which keeps the plain one.
    frames: the video's `VideoFrames` shared with its other expressions (same model and input size); None: this
    expression's own. Sharing changes no bit of the output. matching: blend every predicted frame with label
    propagation from the frames in memory (`prvos_core.inference.matching`); None: the model alone.
    """
    if frames is None:
        frames = VideoFrames(model, video, input_size)
    elif frames.video_id != video.video_id or frames.input_size != input_size or frames.model is not model:
        raise ValueError(f"frames of video {frames.video_id} at {frames.input_size} do not fit this prediction")
    masks = _anchor_masks(video, expression, input_size, anchors) if first_mask_from_gt else {}
    flip = flip and not names_a_side(expression.text)
    plain = _predictions(model, frames, False, words, word_mask, masks, memory_frames, matching)
    if not flip:
        for index, prob in enumerate(plain):
            yield index, prob.float().cpu().numpy()
        return
    mirrored = _predictions(model, frames, True, words, word_mask, masks, memory_frames, matching)
    for index, (prob, unflipped) in enumerate(zip(plain, mirrored, strict=True)):
        yield index, ((prob.float() + unflipped.float()) / 2).cpu().numpy()


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
        frame_store: str | None = None,
    ) -> None:
        self.model = load_predictor(checkpoint, weights, device or torch.device("cpu"))
        self.frame_store = FrameReader(frame_store) if frame_store else None
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
        self,
        expression: Expression,
        video: Video,
        input_size: tuple[int, int],
        *,
        first_mask_from_gt: bool,
        anchors: Anchors = "first",
        flip: bool = False,
        frames: VideoFrames | None = None,
        matching: Matching | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(frame index, foreground probability (h, w) float32 at `input_size`) for every frame of the video,
        from the expression's cached token features (`predict_expression`; evaluation keeps the defaults).
        frames: `self.frames(video, input_size)`, shared by the video's expressions."""
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
            anchors=anchors,
            flip=flip,
            frames=frames,
            matching=matching,
        )

    def frames(self, video: Video, input_size: tuple[int, int]) -> VideoFrames:
        """The video's frames for all its expressions: each decoded and encoded once (`VideoFrames`), from the
        frame store when the predictor has one."""
        return VideoFrames(self.model, video, input_size, self.frame_store)
