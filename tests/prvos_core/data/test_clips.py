"""Training clips: labels come from the right place, augmentation is consistent, sampling is deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prvos_core.data.clips import ClipDataset, ClipSource, ClipSpec, choose_clip_frames, collate_clips
from prvos_core.data.frames import decode_frame, read_object_mask, resize_frame, resize_map
from prvos_core.data.ids import expression_id
from prvos_core.data.layout import SplitPaths
from prvos_core.data.manifest import Expression, Video
from prvos_core.datasets.synth import generate_synthetic
from prvos_core.pseudo.store import RefinedLabel, open_store, write_refined

SIZE = (32, 40)


def fake_text(texts):
    """Deterministic token features: a stand-in for the text cache, which has its own tests."""
    tokens = torch.stack([torch.full((4, 8), float(len(t))) for t in texts])
    return tokens, torch.ones(len(texts), 4, dtype=torch.bool)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_synthetic(root, videos=1, valid_videos=1, frames=10, size=(48, 48), label_every=5, seed=3)
    return root


def _source(root, pseudo=(), gt_folder="Annotations"):
    frames = tuple(f"{i:05d}" for i in range(10))
    video = Video("synth0000", "train", str(root), frames, ("00000", "00005"), 48, 48)
    expression = Expression(expression_id("synth0000", "1", "t"), "0", "train", "synth0000", "1", "circle", "t",
                            ("00000", "00005"), frames)  # fmt: skip
    gt = frames if gt_folder == "full_annotations" else ("00000", "00005")
    return ClipSource(expression, video, gt, tuple(pseudo), gt_folder)


def _refined_store(tmp_path, source):
    label = np.full((10, 24, 24), 255, np.uint8)
    label[2, :12] = 1
    label[2, 12:] = 0
    weight = np.zeros((10, 24, 24), np.float32)
    weight[2] = 0.6
    store = open_store(str(tmp_path / "refined.zarr"))
    write_refined(store, RefinedLabel(source.expression.expression_id, source.video.frame_ids, label, weight,
                                      ("00002",), source.gt_frames))  # fmt: skip
    return str(tmp_path / "refined.zarr"), label, weight


def test_labels_come_from_ground_truth_pseudo_labels_or_nowhere(dataset_root, tmp_path):
    source = _source(dataset_root, pseudo=("00002",))
    store, label, weight = _refined_store(tmp_path, source)
    spec = ClipSpec(frames=4, size=SIZE, min_crop=1.0, brightness=0.0)
    clip = ClipDataset([source], fake_text, spec, refined_store=store)[0]
    assert clip.frame_ids == ("00000", "00001", "00002", "00005")  # 3 labelled frames + 1 neighbour
    paths = SplitPaths(dataset_root, "train")
    for t, frame in enumerate(clip.frame_ids):
        image = resize_frame(decode_frame(str(paths.frame_path("synth0000", frame))), SIZE)
        assert torch.equal(clip.frames[t], torch.from_numpy(image))
    gt = resize_map(read_object_mask(str(paths.mask_path("synth0000", "00005")), "1"), SIZE)
    assert torch.equal(clip.labels[3], torch.from_numpy(gt)) and gt.sum() > 0
    assert torch.all(clip.weights[0] == 1) and torch.all(clip.weights[3] == 1)
    assert torch.equal(clip.labels[2], torch.from_numpy(resize_map(label[2], SIZE)))
    assert torch.allclose(clip.weights[2], torch.tensor(0.6), atol=1 / 255)
    assert torch.all(clip.labels[1] == 255) and torch.all(clip.weights[1] == 0)  # unlabelled neighbour
    assert clip.words.shape == (4, 8) and clip.word_mask.all()


def test_full_annotations_label_every_frame(dataset_root):
    source = _source(dataset_root, gt_folder="full_annotations")
    clip = ClipDataset([source], fake_text, ClipSpec(frames=5, size=SIZE))[0]
    assert len(clip.frame_ids) == 5 and bool((clip.labels != 255).all())
    assert set(clip.frame_ids) - {"00000", "00005"}, "full supervision labels frames between the sparse ones"


def test_one_crop_for_frames_and_labels(dataset_root):
    source = _source(dataset_root)
    spec = ClipSpec(frames=2, size=SIZE, min_crop=0.5, brightness=0.0)
    dataset = ClipDataset([source], fake_text, spec, seed=5)
    clip = dataset[0]
    rng = np.random.default_rng((5, 0, 0))
    choose_clip_frames(source, 2, rng)
    box, _ = dataset._augmentation(rng)
    assert box.y1 - box.y0 < 1.0
    paths = SplitPaths(dataset_root, "train")
    for t, frame in enumerate(clip.frame_ids):
        image = resize_frame(decode_frame(str(paths.frame_path("synth0000", frame))), SIZE, box)
        mask = resize_map(read_object_mask(str(paths.mask_path("synth0000", frame)), "1"), SIZE, box)
        assert torch.equal(clip.frames[t], torch.from_numpy(image))
        assert torch.equal(clip.labels[t], torch.from_numpy(mask))


def test_deterministic_by_seed_epoch_and_index(dataset_root):
    source = _source(dataset_root)
    spec = ClipSpec(frames=3, size=SIZE)
    first = ClipDataset([source], fake_text, spec, seed=1, samples_per_source=4)
    second = ClipDataset([source], fake_text, spec, seed=1, samples_per_source=4)
    assert len(first) == 4
    for index in range(4):
        assert torch.equal(first[index].frames, second[index].frames)
    clips = [first[i] for i in range(4)]
    assert any(not torch.equal(clips[0].frames, c.frames) for c in clips[1:])
    first.set_epoch(1)
    assert not torch.equal(first[0].frames, second[0].frames)


def test_collate_stacks_a_batch(dataset_root):
    dataset = ClipDataset([_source(dataset_root)], fake_text, ClipSpec(frames=3, size=SIZE), samples_per_source=2)
    batch = collate_clips([dataset[0], dataset[1]])
    assert batch["frames"].shape == (2, 3, 3, *SIZE) and batch["frames"].dtype == torch.uint8
    assert batch["labels"].shape == (2, 3, *SIZE) and batch["weights"].dtype == torch.float32
    assert batch["words"].shape == (2, 4, 8) and batch["word_mask"].dtype == torch.bool


def test_clips_span_the_video_however_densely_it_is_labelled(dataset_root):
    """One labelled frame per third of the time line: dense labels (every frame) give clips at least the time span
    of sparse ones (every 5th). A uniform draw from the labelled frames made dense clips shorter (16 frames, 3 per
    clip: 7.5 frames from first to last with every frame labelled, 12.5 with every 5th)."""
    sparse, dense = _source(dataset_root), _source(dataset_root, gt_folder="full_annotations")
    rng = np.random.default_rng(0)

    def mean_span(source, length):
        spans = []
        for _ in range(400):
            frames = [int(f) for f in choose_clip_frames(source, length, rng)]
            assert frames == sorted(frames) and len(set(frames)) == length
            spans.append(frames[-1] - frames[0])
        return np.mean(spans)

    # Every 5th of 10 frames labelled: 00000 and 00005, and 1 neighbour of the first to fill a 3-frame clip.
    assert mean_span(sparse, 3) == 5.0
    assert mean_span(dense, 3) >= 5.0
    # Each third of the dense video gives one frame: the first from 0-3, the second from 4-6, the last from 7-9.
    for _ in range(100):
        frames = [int(f) for f in choose_clip_frames(dense, 3, rng)]
        assert frames[0] <= 3 and 4 <= frames[1] <= 6 and frames[2] >= 7
