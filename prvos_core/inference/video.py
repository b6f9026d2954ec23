"""`prvos predict`: a trained checkpoint segments the object a sentence refers to in the user's own video.

Out come one palette PNG mask per frame (`masks/<frame id>.png`, 0 background, 1 object, through
`prvos_core.data.masks`), an overlay video (`overlay.mp4`, the mask tinted and outlined on every frame) and
`prediction.json` (what ran, how long), written whole or not at all (`prvos_core.storage`).

As in evaluation, the model finds the object from the text alone on the first frame and propagates frame by
frame; frames are decoded one at a time (`prvos_core.inference.video_io`), so memory stays flat however long the video.
The text encoder is the one the checkpoint was trained with: the checkpoint's config, else the config of the
run the checkpoint sits in (`<run>/r<k>-train/checkpoint`), else the shipped MiniLM; `text_encoder` overrides.
Nothing downloads.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from prvos_core.data.frames import resize_frame
from prvos_core.data.masks import write_palette_mask
from prvos_core.errors import CheckpointError, UserError
from prvos_core.inference.predict import Weights, load_predictor, upsample_prob
from prvos_core.inference.propagation import iter_propagate
from prvos_core.inference.video_io import DEFAULT_FPS, Mp4Writer, VideoSource, open_video
from prvos_core.labels import binary_mask
from prvos_core.model import builders
from prvos_core.model.checkpoint import read_checkpoint_meta
from prvos_core.progress import progress_bar
from prvos_core.storage import check_replaceable, output_folder
from prvos_core.text.encoder import DEFAULT_MAX_TOKENS, TextEncoder
from prvos_core.viz.pictures import overlay_mask

MASKS_DIR = "masks"
OVERLAY_FILE = "overlay.mp4"
SUMMARY_FILE = "prediction.json"
RUN_CONFIG = "config.yaml"  # the run store's resolved config, two levels above a train stage's checkpoint


@dataclass(frozen=True)
class VideoPrediction:
    """What `predict_video` wrote and how fast."""

    out: str
    checkpoint: str
    video: str
    text: str
    text_encoder: str
    frames: int
    height: int
    width: int
    fps: float
    foreground_frames: int  # frames whose mask has at least one object pixel
    seconds: float  # in all, loading the model and text encoder included
    frame_seconds: float  # decoding, predicting and writing the frames

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.frame_seconds if self.frame_seconds > 0 else float("inf")


def text_encoder_of(checkpoint: str | Path) -> tuple[str | None, int]:
    """(encoder path or None for the shipped MiniLM, max_tokens) the checkpoint was trained with."""
    meta = read_checkpoint_meta(checkpoint)
    text = (meta.get("config") or {}).get("text")
    if text is None and "://" not in str(checkpoint):
        run_config = Path(checkpoint).resolve().parent.parent / RUN_CONFIG
        if run_config.is_file():
            try:
                text = (yaml.safe_load(run_config.read_text(encoding="utf-8")) or {}).get("text")
            except (OSError, yaml.YAMLError):
                text = None
    if not isinstance(text, dict):
        return None, DEFAULT_MAX_TOKENS
    return text.get("encoder"), int(text.get("max_tokens", DEFAULT_MAX_TOKENS))


def model_input_size(meta: dict) -> tuple[int, int]:
    """(height, width) the checkpoint's model was trained at: its config, else its size's default."""
    configured = ((meta.get("config") or {}).get("model") or {}).get("input_size")
    return builders.input_size(meta["size"], configured)


def predict_video(
    checkpoint: str | Path,
    video: str | Path,
    text: str,
    out: str | Path,
    *,
    text_encoder: str | None = None,
    weights: Weights = "student",
    memory_frames: int = 4,
    fps: float | None = None,
    device: str = "cpu",
    threads: int = 1,
) -> VideoPrediction:
    """Segment the object `text` refers to in every frame of `video` (a folder of frames or an MP4) with the
    checkpoint folder `checkpoint`, writing masks, overlay and summary into `out` (replacing an earlier
    prediction there). `threads`: torch CPU threads; one frame at a time of the tiny model runs fastest on one
    (two on a busy 2-core machine were 50x slower), r50 on an idle many-core CPU gains from more.
    Every problem a user can cause raises a UserError in one line."""
    started = time.perf_counter()
    text = text.strip()
    if threads < 1:
        raise UserError(f"--threads must be at least 1 (got {threads})")
    if not text:
        raise UserError("--text is empty; give the referring expression, e.g. --text 'a black swan'")
    checkpoint, out = str(checkpoint), Path(out).expanduser()
    if "://" not in checkpoint and not Path(checkpoint).is_dir():
        raise CheckpointError(f"{checkpoint}: no such checkpoint folder; give <run>/r<k>-train/checkpoint")
    meta = read_checkpoint_meta(checkpoint)
    check_replaceable(out, SUMMARY_FILE, "prvos predict")
    source = open_video(video)
    encoder_path, max_tokens = text_encoder_of(checkpoint)
    encoder = TextEncoder.from_path(text_encoder or encoder_path, max_tokens=max_tokens)
    if encoder.dim != meta["text_dim"]:
        raise CheckpointError(
            f"text encoder {encoder.model_dir} gives {encoder.dim}-d words, checkpoint {checkpoint} expects "
            f"{meta['text_dim']}-d; pass --text-encoder with the encoder it was trained with"
        )
    # The pipeline trains on the float16 text cache: round the same way, so features match what it saw.
    words, word_mask = encoder.encode([text])
    words = words.half().float()
    model = load_predictor(checkpoint, weights, torch.device(device))
    rate = fps or source.fps or DEFAULT_FPS

    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    with output_folder(out, SUMMARY_FILE, "prvos predict") as staging:
        frames_started = time.perf_counter()
        try:
            foreground = _predict_into(staging, model, source, words[0], word_mask[0], model_input_size(meta),
                                       memory_frames, rate)  # fmt: skip
        finally:
            torch.set_num_threads(threads_before)
        result = VideoPrediction(
            out=str(out), checkpoint=checkpoint, video=str(source.path), text=text,
            text_encoder=str(encoder.model_dir), frames=source.n_frames, height=source.height, width=source.width,
            fps=rate, foreground_frames=foreground, seconds=time.perf_counter() - started,
            frame_seconds=time.perf_counter() - frames_started,
        )  # fmt: skip
        summary = {**asdict(result), "frames_per_second": result.frames_per_second, "weights": weights,
                   "threads": threads}  # fmt: skip
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return result


class _StreamedFrames:
    """A (T, 3, h, w) float view of a video for `iter_propagate`, which reads frames in order one at a time:
    each read decodes the next frame and keeps its full-size RGB picture in `current` for the overlay."""

    def __init__(self, source: VideoSource, size: tuple[int, int]) -> None:
        self.shape = torch.Size((source.n_frames, 3, *size))
        self.ndim = 4
        self.size = size
        self._frames = source.frames()
        self._next = 0
        self.current: np.ndarray | None = None

    def __getitem__(self, item: slice) -> torch.Tensor:
        assert item.start == self._next and item.stop == item.start + 1, "frames are read once, in order"
        self._next += 1
        self.current = next(self._frames)
        return torch.from_numpy(resize_frame(self.current, self.size)).unsqueeze(0).float().div_(255)


def _predict_into(folder: Path, model, source: VideoSource, words: torch.Tensor, word_mask: torch.Tensor,
                  input_size: tuple[int, int], memory_frames: int, fps: float) -> int:  # fmt: skip
    """Write masks and overlay into `folder`; returns how many frames have a non-empty mask."""
    masks = folder / MASKS_DIR
    masks.mkdir()
    frames = _StreamedFrames(source, input_size)
    foreground = 0
    size = (source.height, source.width)
    propagation = iter_propagate(model, frames, words, word_mask, None, memory_frames)
    with Mp4Writer(folder / OVERLAY_FILE, size, fps) as writer, \
            progress_bar("predict", total=source.n_frames, unit="frame") as bar:  # fmt: skip
        for index, prob in enumerate(propagation):
            mask = binary_mask(upsample_prob(prob.float().cpu().numpy(), size))
            write_palette_mask(masks / f"{source.frame_ids[index]}.png", mask)
            writer.write(overlay_mask(frames.current, mask))
            foreground += bool(mask.any())
            bar.update(1)
    return foreground
