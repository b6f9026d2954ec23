"""Training clips: per expression, T frames mixing ground-truth frames and refined pseudo-labelled frames.

Each sample is one clip of one expression: frames in temporal order, a label map per frame (0 background,
1 object, 255 ignore) with per-pixel weights (ground truth 1; pseudo-labels their refined weight; a frame
without any label is all-ignore and only carries memory), and the expression's cached token features.

Augmentation is one random crop box and one brightness factor per clip, applied to every frame and label
alike. There is no horizontal flip: expressions say "left" and "right". Everything random comes from a
generator seeded by (seed, epoch, index), so a clip is the same on any worker and after a restart.

`clip_loader` batches them in loader processes: its sampler hands each process (epoch, index) pairs, so a clip
does not depend on how many processes read them, nor on whether they live across epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from prvos_core.data.frame_store import FrameReader
from prvos_core.data.frames import Box, load_frame, resize_map
from prvos_core.data.manifest import Expression, Manifest, Video
from prvos_core.data.object_masks import ANNOTATIONS, dense_frames, ground_truth_mask
from prvos_core.labels import IGNORE_LABEL
from prvos_core.pseudo.store import chosen_pseudo_frames, open_store, read_refined


@dataclass(frozen=True)
class ClipSpec:
    frames: int = 5  # T frames per clip (the seed: 5)
    size: tuple[int, int] = (96, 96)  # model input height, width
    min_crop: float = 0.8  # crop box side as a share of the frame, drawn from [min_crop, 1]; 1 = no crop
    brightness: float = 0.1  # brightness factor drawn from [1 - b, 1 + b]; colour stays (expressions name colours)
    # Chance that a clip of an expression with a single labelled frame is a static clip: T views of that frame
    # (`drifting_boxes`), each labelled, so that L_rest trains the memory read where no second label exists.
    static: float = 0.0
    drift: float = 0.08  # a static clip's crop box moves by up to this share of its side per frame
    # Chance that a clip whose first frame is ground truth gives that mask to the memory (`Clip.first_given`), as
    # the teacher's anchors do; else the student's own prediction of frame 0 enters memory, as in evaluation.
    first_mask: float = 0.0
    # Pseudo-labelled frames only fill the time spans of a clip that have no ground-truth frame (see
    # `choose_clip_frames`); else a span draws from its ground-truth and pseudo-labelled frames alike.
    pseudo_fill_only: bool = False


@dataclass(frozen=True)
class ClipSource:
    """What one expression can be trained on."""

    expression: Expression
    video: Video
    gt_frames: tuple[str, ...]  # frames with a ground-truth mask (may be none: an unlabelled video)
    pseudo_frames: tuple[str, ...] = ()  # frames with refined pseudo-labels chosen by the refinement
    gt_folder: str = ANNOTATIONS  # FULL_ANNOTATIONS: the full-supervision upper bound where the split has it

    @property
    def labelled(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.gt_frames) | set(self.pseudo_frames)))


def clip_sources(
    manifest: Manifest, split: str, *, refined_store: str | None = None, full_annotations: bool = False
) -> list[ClipSource]:
    """Every expression of the split that has something to learn from: ground truth or chosen pseudo-labels.

    refined_store: a refine stage's refined.zarr, whose chosen pseudo-labelled frames join the ground truth
    (None: ground truth only). full_annotations: the full-supervision upper bound, every dense mask is ground
    truth (`object_masks.dense_frames`): every frame from `full_annotations/` where the video's split has it (the
    synthetic set, unlabelled videos included), else the GT frames and the frames the label regime hid, from
    `Annotations/`. An expression without GT trains on its chosen pseudo-labelled frames alone.
    """
    chosen = chosen_pseudo_frames(open_store(refined_store, mode="r")) if refined_store else {}
    sources = []
    for expression in manifest.split_expressions(split):
        video = manifest.video_of(expression)
        gt_frames, folder = dense_frames(expression, video) if full_annotations else (expression.gt_frames, ANNOTATIONS)
        sources.append(ClipSource(expression, video, gt_frames, chosen.get(expression.expression_id, ()), folder))
    return [source for source in sources if source.labelled]


@dataclass(frozen=True)
class Clip:
    frames: torch.Tensor  # (T, 3, H, W) uint8 RGB
    labels: torch.Tensor  # (T, H, W) uint8: 0, 1, 255 = ignore
    weights: torch.Tensor  # (T, H, W) float32
    words: torch.Tensor  # (L, D) float32 token features
    word_mask: torch.Tensor  # (L,) bool, True = real token
    frame_ids: tuple[str, ...]
    expression_id: str
    first_given: bool = False  # frame 0's ground-truth mask enters memory in training (ClipSpec.first_mask)


class ClipDataset(Dataset):
    """Map-style dataset: index i -> a clip of source `i % len(sources)`, `samples_per_source` clips each; or
    `clips` in all, drawn in an order of the sources that changes every epoch."""

    def __init__(
        self,
        sources: list[ClipSource],
        text_lookup,
        spec: ClipSpec,
        *,
        refined_store: str | None = None,
        frame_store: str | None = None,
        seed: int = 0,
        samples_per_source: int = 1,
        clips: int | None = None,
        unlabelled_share: float | None = None,
    ) -> None:
        """`text_lookup(texts) -> (tokens (N, L, D), mask (N, L))`, e.g. a loaded TextCache's `lookup`.

        frame_store: the frames stage's frames.zarr, from which clips are cut (no JPEG is decoded); None: the
        JPEGs, decoded per clip.

        clips: the epoch's length when given, so that variants training on more or fewer expressions take the
        same number of steps (each epoch visits the sources in its own order); else sources x samples_per_source.

        unlabelled_share: the share of an epoch's clips drawn from sources without any ground-truth frame
        (unlabelled videos), the rest from those with some; None: every source alike (then unlabelled videos take
        clips in proportion to their number, 3 in 4 with 24 unlabelled beside 8 labelled videos).
        """
        self.sources = [s for s in sources if s.labelled]
        self.text_lookup, self.spec, self.seed = text_lookup, spec, seed
        self.refined_store_uri, self.samples_per_source = refined_store, samples_per_source
        self.clips, self.unlabelled_share = clips, unlabelled_share
        self.frames = FrameReader(frame_store) if frame_store else None
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, source order) of a fixed-length epoch
        self.epoch = 0
        self._refined = None  # opened lazily, once per worker process

    def set_epoch(self, epoch: int) -> None:
        """The epoch of plain indices `dataset[i]`; an (epoch, index) key (`EpochSampler`) names its own."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.clips is not None:
            return self.clips if self.sources else 0
        return len(self.sources) * self.samples_per_source

    def __getitem__(self, key: int | tuple[int, int]) -> Clip:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        source = self.sources[self._source_index(epoch, index)]
        rng = np.random.default_rng((self.seed, epoch, index))
        frame_ids = choose_clip_frames(source, self.spec.frames, rng, self.spec.pseudo_fill_only)
        box, brightness = self._augmentation(rng)
        boxes = [box] * len(frame_ids)
        if self.spec.static > 0 and len(source.labelled) == 1 and rng.random() < self.spec.static:
            frame_ids = source.labelled * self.spec.frames
            boxes = drifting_boxes(box, self.spec.frames, self.spec.drift, rng)
        frames, labels, weights = self._load(source, frame_ids, boxes)
        frames = brighten(frames, brightness)
        first_given = self.spec.first_mask > 0 and frame_ids[0] in source.gt_frames
        first_given = first_given and rng.random() < self.spec.first_mask
        words, word_mask = self.text_lookup([source.expression.text])
        return Clip(
            torch.from_numpy(frames),
            torch.from_numpy(labels),
            torch.from_numpy(weights),
            words[0],
            word_mask[0],
            frame_ids,
            source.expression.expression_id,
            bool(first_given),
        )

    def _source_index(self, epoch: int, index: int) -> int:
        """Which source clip `index` shows. With a fixed epoch length (`clips`), every epoch visits the sources in
        its own order (seeded by seed and epoch, the same on every worker): index % len(sources) alone would draw
        the same first `clips` sources every epoch and never the rest when there are more sources than clips."""
        count = len(self.sources)
        if self.clips is None and self.unlabelled_share is None:
            return index % count
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self._epoch_order(np.random.default_rng((self.seed, epoch, count))))
        order = self._order[1]
        return int(order[index % len(order)])

    def _epoch_order(self, rng: np.random.Generator) -> np.ndarray:
        """Source indices of one epoch: a permutation of the sources, or with `unlabelled_share`, len(self)
        entries of which that share cycles through the unlabelled sources and the rest through the others, each
        group in its own random order, the two shuffled together."""
        count = len(self.sources)
        unlabelled = [i for i, source in enumerate(self.sources) if not source.gt_frames]
        labelled = [i for i, source in enumerate(self.sources) if source.gt_frames]
        if self.unlabelled_share is None or not unlabelled or not labelled:
            return rng.permutation(count)
        length = len(self)
        taken = round(self.unlabelled_share * length)
        picks = np.concatenate([np.resize(rng.permutation(unlabelled), taken),
                                np.resize(rng.permutation(labelled), length - taken)])  # fmt: skip
        return rng.permutation(picks)

    def _augmentation(self, rng: np.random.Generator) -> tuple[Box, float]:
        side = rng.uniform(self.spec.min_crop, 1.0)
        y0, x0 = rng.uniform(0, 1 - side), rng.uniform(0, 1 - side)
        brightness = rng.uniform(1 - self.spec.brightness, 1 + self.spec.brightness)
        return Box(y0, x0, y0 + side, x0 + side), float(brightness)

    def _load(self, source: ClipSource, frame_ids: tuple[str, ...], boxes: list[Box]):
        video, size = source.video, self.spec.size
        paths = video.paths
        gt, pseudo = set(source.gt_frames), set(source.pseudo_frames) - set(source.gt_frames)
        refined = self._refined_labels(source, [f for f in frame_ids if f in pseudo])
        frames = np.empty((len(frame_ids), 3, *size), np.uint8)
        labels = np.full((len(frame_ids), *size), IGNORE_LABEL, np.uint8)
        weights = np.zeros((len(frame_ids), *size), np.float32)
        position = {frame: index for index, frame in enumerate(video.frame_ids)} if self.frames else {}
        for t, (frame_id, box) in enumerate(zip(frame_ids, boxes, strict=True)):
            if self.frames is not None:
                frames[t] = self.frames.frame(video, position[frame_id], size, box)
            else:
                frames[t] = load_frame(str(paths.frame_path(video.video_id, frame_id)), size, box,
                                       (video.height, video.width))  # fmt: skip
            if frame_id in gt:
                mask = ground_truth_mask(source.expression, video, frame_id, source.gt_folder)
                labels[t] = resize_map(mask, size, box)
                weights[t] = 1.0
            elif frame_id in refined:
                label, weight = refined[frame_id]
                labels[t] = resize_map(label, size, box)
                weights[t] = resize_map(weight, size, box)
        return frames, labels, weights

    def _refined_labels(self, source: ClipSource, frame_ids: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if not frame_ids:
            return {}
        if self._refined is None:
            self._refined = open_store(self.refined_store_uri, mode="r")
        refined = read_refined(self._refined, source.expression.expression_id, frame_ids)
        return {f: (refined.label[i], refined.weight[i]) for i, f in enumerate(refined.frame_ids)}


def brighten(frames: np.ndarray, factor: float) -> np.ndarray:
    """uint8 frames times `factor`, clipped to [0, 255] and truncated: through a 256-entry table, the same values
    as computing it per pixel in float32 at a fraction of the cost."""
    table = np.clip(np.arange(256, dtype=np.float32) * factor, 0, 255).astype(np.uint8)
    return np.take(table, frames)  # 4-5x faster than table[frames], which goes through fancy indexing


def drifting_boxes(box: Box, count: int, drift: float, rng: np.random.Generator) -> list[Box]:
    """`count` crop boxes of `box`'s size, the first `box` itself, each next one moved from the last by up to
    `drift` x its side in y and x and kept inside the frame: the object moves across the views of a static clip
    as it would across frames, so reading the mask from memory means finding where it went (static-image
    training of memory networks, as STM's pre-training on images)."""
    height, width = box.y1 - box.y0, box.x1 - box.x0
    boxes, y0, x0 = [box], box.y0, box.x0
    for _ in range(count - 1):
        y0 = float(np.clip(y0 + rng.uniform(-drift, drift) * height, 0.0, 1.0 - height))
        x0 = float(np.clip(x0 + rng.uniform(-drift, drift) * width, 0.0, 1.0 - width))
        boxes.append(Box(y0, x0, y0 + height, x0 + width))
    return boxes


def choose_clip_frames(
    source: ClipSource, length: int, rng: np.random.Generator, pseudo_fill_only: bool = False
) -> tuple[str, ...]:
    """T frames in temporal order: as many labelled frames as there are (up to T), the rest filled with unlabelled
    frames next to a labelled one so the memory sees the motion in between.

    Labelled frames are drawn spread over the video: its time line is cut into T equal spans and each span gives
    one labelled frame at random (spans without one are made up from the other labelled frames); with
    `pseudo_fill_only`, a span that has a ground-truth frame draws from those alone, so pseudo-labels take the
    place of missing supervision and never of ground truth. Drawing uniformly
    from the labelled set instead ties a clip's time span to how densely the video is labelled (16 frames, 3 per
    clip: 7.5 frames first to last with every frame labelled, 12.5 with every 5th), so denser labels showed the
    student less motion per clip ("moving left" is learned from displacement) and scored lower.
    """
    all_frames = source.video.frame_ids
    position = {frame: index for index, frame in enumerate(all_frames)}
    labelled = sorted(source.labelled, key=position.__getitem__)
    count = min(length, len(labelled))
    span = np.minimum((np.array([position[f] for f in labelled]) * count) // max(len(all_frames), 1), count - 1)
    chosen = set()
    gt = set(source.gt_frames)
    for part in range(count):
        members = [frame for frame, s in zip(labelled, span, strict=True) if s == part]
        if pseudo_fill_only and any(frame in gt for frame in members):
            members = [frame for frame in members if frame in gt]
        if members:
            chosen.add(members[int(rng.integers(len(members)))])
    rest = [frame for frame in labelled if frame not in chosen]
    if len(chosen) < count:
        chosen.update(rng.choice(rest, size=count - len(chosen), replace=False).tolist())
    anchor = position[min(chosen, key=position.__getitem__)]
    offset = 1
    while len(chosen) < min(length, len(all_frames)):
        for index in (anchor + offset, anchor - offset):
            if 0 <= index < len(all_frames) and len(chosen) < length:
                chosen.add(all_frames[index])
        offset += 1
    return tuple(sorted(chosen, key=position.__getitem__))


def collate_clips(clips: list[Clip]) -> dict[str, torch.Tensor | list]:
    """Stack clips into a batch: frames (B, T, 3, H, W) uint8, labels (B, T, H, W), weights, words, word_mask,
    first_given (B,) bool."""
    return {
        "frames": torch.stack([c.frames for c in clips]),
        "labels": torch.stack([c.labels for c in clips]),
        "weights": torch.stack([c.weights for c in clips]),
        "words": torch.stack([c.words for c in clips]),
        "word_mask": torch.stack([c.word_mask for c in clips]),
        "expression_ids": [c.expression_id for c in clips],
        "first_given": torch.tensor([c.first_given for c in clips], dtype=torch.bool),
    }


class EpochSampler(Sampler[tuple[int, int]]):
    """A sampler's indices as (epoch, index) keys of a `ClipDataset`, the epoch being the one last set here.

    The epoch travels with each index because loader processes hold their own copy of the dataset, made when
    they start: kept across epochs (`persistent_workers`), they would never see `ClipDataset.set_epoch` called in
    the training process, and would draw every epoch's clips as the first one's.
    """

    def __init__(self, sampler: Sampler[int]) -> None:
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the keys, and of the wrapped sampler's shuffle (a DistributedSampler's) when it has one."""
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


# Batches each loader process keeps ready: torch's default of 2 plus a margin for a slow read (object store, cold
# page cache); a batch is B x T uint8 frames, a few MB.
PREFETCH_BATCHES = 4


def clip_loader(
    dataset: ClipDataset, sampler: Sampler[int], *, batch_size: int, workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """Batches (`collate_clips`) of `dataset` in the order of `sampler`, read by `workers` processes kept across
    epochs (0: in this process). Call `loader.sampler.set_epoch(epoch)` before each epoch: the clips are then the
    same with any `workers`. pin_memory: page-locked batches, for asynchronous copies to a GPU."""
    # Spawned, not forked: a fork copies the parent's threads' locks mid-state (Ray's gRPC threads, OpenCV's pool),
    # and a forked loader hung in `cv2.setNumThreads` after the parent had resized with OpenCV (seen, 2026-12-02).
    kept = {"persistent_workers": True, "prefetch_factor": PREFETCH_BATCHES, "worker_init_fn": _one_thread,
            "multiprocessing_context": "spawn"}  # fmt: skip
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(sampler),
        collate_fn=collate_clips,
        num_workers=workers,
        pin_memory=pin_memory,
        **(kept if workers > 0 else {}),
    )


def _one_thread(worker_id: int) -> None:
    """Loader processes decode and resize with OpenCV, whose thread pool would be as wide as the machine in each
    of them (torch already runs loader processes on one thread): they share the CPUs the worker reserved."""
    cv2.setNumThreads(1)
