"""Training clips: labels come from the right place, augmentation is consistent, sampling is deterministic."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from prvos_core.data.clips import (
    ClipDataset,
    ClipSource,
    ClipSpec,
    brighten,
    choose_clip_frames,
    clip_loader,
    clip_sources,
    collate_clips,
    drifting_boxes,
)
from prvos_core.data.frames import decode_frame, read_object_mask, resize_frame, resize_map
from prvos_core.data.ids import expression_id
from prvos_core.data.layout import SplitPaths
from prvos_core.data.manifest import Expression, Manifest, Video
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


def _first_frame_only(root):
    source = _source(root)
    return replace(source, gt_frames=("00000",), expression=replace(source.expression, gt_frames=("00000",)))


def test_a_static_clip_shows_the_one_labelled_frame_in_drifting_crops_each_labelled(dataset_root):
    source = _first_frame_only(dataset_root)
    spec = ClipSpec(frames=4, size=SIZE, min_crop=0.6, brightness=0.0, static=1.0, drift=0.1)
    dataset = ClipDataset([source], fake_text, spec, seed=2)
    clip = dataset[0]
    assert clip.frame_ids == ("00000",) * 4
    rng = np.random.default_rng((2, 0, 0))
    choose_clip_frames(source, 4, rng)
    box, _ = dataset._augmentation(rng)
    rng.random()
    boxes = drifting_boxes(box, 4, 0.1, rng)
    assert boxes[0] == box and len({(b.y0, b.x0) for b in boxes}) == 4, "every view has its own crop"
    paths = SplitPaths(dataset_root, "train")
    image = decode_frame(str(paths.frame_path("synth0000", "00000")))
    mask = read_object_mask(str(paths.mask_path("synth0000", "00000")), "1")
    for t, view in enumerate(boxes):
        side = (round(view.y1 - view.y0, 9), round(view.x1 - view.x0, 9))
        assert side == (round(box.y1 - box.y0, 9), round(box.x1 - box.x0, 9)), "the crop moves, its size stays"
        assert 0 <= view.y0 and view.y1 <= 1 and 0 <= view.x0 and view.x1 <= 1
        assert torch.equal(clip.frames[t], torch.from_numpy(resize_frame(image, SIZE, view)))
        assert torch.equal(clip.labels[t], torch.from_numpy(resize_map(mask, SIZE, view)))
    assert bool((clip.weights == 1).all()), "every view is ground truth: L_rest trains the memory read"
    assert not torch.equal(clip.labels[0], clip.labels[3]), "the object moves across the views"


def test_static_clips_only_for_expressions_with_one_labelled_frame_and_only_when_asked(dataset_root):
    static = ClipSpec(frames=3, size=SIZE, static=1.0)
    two_labels = ClipDataset([_source(dataset_root)], fake_text, static)[0]
    assert len(set(two_labels.frame_ids)) == 3
    one_label = _first_frame_only(dataset_root)
    plain = ClipDataset([one_label], fake_text, ClipSpec(frames=3, size=SIZE), seed=4)
    assert plain[0].frame_ids == ("00000", "00001", "00002") and bool((plain[0].labels[1:] == 255).all())
    half = ClipDataset([one_label], fake_text, replace(static, static=0.5), seed=4, samples_per_source=40)
    kinds = [len(set(half[i].frame_ids)) for i in range(40)]
    assert 10 <= kinds.count(1) <= 30 and kinds.count(1) + kinds.count(3) == 40


def test_first_given_only_for_clips_starting_on_ground_truth_at_the_asked_rate(dataset_root, tmp_path):
    source = _source(dataset_root)  # ground truth on 00000 and 00005
    never = ClipDataset([source], fake_text, ClipSpec(frames=3, size=SIZE), samples_per_source=20)
    assert not any(never[i].first_given for i in range(20))
    always = ClipDataset([source], fake_text, ClipSpec(frames=3, size=SIZE, first_mask=1.0), samples_per_source=20)
    assert all(always[i].first_given == (always[i].frame_ids[0] in source.gt_frames) for i in range(20))
    half = ClipDataset([source], fake_text, ClipSpec(frames=3, size=SIZE, first_mask=0.5), samples_per_source=60)
    assert 15 <= sum(half[i].first_given for i in range(60)) <= 45
    pseudo_only = replace(source, gt_frames=(), pseudo_frames=("00002",),
                          expression=replace(source.expression, gt_frames=()))  # fmt: skip
    store, _, _ = _refined_store(tmp_path, pseudo_only)
    clip = ClipDataset([pseudo_only], fake_text, ClipSpec(frames=3, size=SIZE, first_mask=1.0), refined_store=store)[0]
    assert not clip.first_given, "a pseudo-labelled first frame never stands in for ground truth"
    assert collate_clips([always[0], clip])["first_given"].tolist() == [always[0].first_given, False]


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


def test_pseudo_labels_fill_only_the_spans_ground_truth_leaves_empty_when_asked(dataset_root):
    """GT on 00000 and 00005 of 10 frames, pseudo-labels on 00001, 00002, 00006 and 00008. Two-frame clips: each
    half of the time line has a GT frame, so with `pseudo_fill_only` no pseudo-label enters a clip; mixed, they
    take the place of GT in about half the spans. Three-frame clips: the last third (7-9) has no GT, so there a
    pseudo-label fills it in both modes."""
    source = _source(dataset_root, pseudo=("00001", "00002", "00006", "00008"))
    rng = np.random.default_rng(0)
    mixed = [choose_clip_frames(source, 2, rng) for _ in range(300)]
    filled = [choose_clip_frames(source, 2, rng, pseudo_fill_only=True) for _ in range(300)]
    assert all(frames == ("00000", "00005") for frames in filled)
    share = np.mean([frame not in source.gt_frames for frames in mixed for frame in frames])
    assert 0.5 < share < 0.8  # spans 0-4 and 5-9: 2 of 3 and 2 of 3 labelled frames are pseudo-labels
    for _ in range(100):
        frames = choose_clip_frames(source, 3, rng, pseudo_fill_only=True)
        assert frames == ("00000", "00005", "00008")
    # The default draws exactly as before the option existed.
    assert choose_clip_frames(source, 3, np.random.default_rng(7)) == choose_clip_frames(
        source, 3, np.random.default_rng(7), pseudo_fill_only=False
    )


def _full_masks(root, frames) -> list[np.ndarray]:
    """The synthetic object's every-frame masks (train/full_annotations) at the clip size."""
    folder = SplitPaths(root, "train").full_annotations / "synth0000"
    return [resize_map(read_object_mask(str(folder / f"{frame}.png"), "1"), SIZE) for frame in frames]


EXACT = ClipSpec(frames=4, size=SIZE, min_crop=1.0, brightness=0.0)  # no crop, no brightness change


def test_full_supervision_without_full_annotations_trains_on_the_frames_the_regime_hid(dataset_root, tmp_path):
    # A dense dataset (every frame's mask in Annotations/, no full_annotations/) under the regime "first".
    root = tmp_path / "dense"
    shutil.copytree(dataset_root / "train/JPEGImages", root / "train/JPEGImages")
    shutil.copytree(dataset_root / "train/full_annotations", root / "train/Annotations")
    base = _source(root)
    expression = replace(base.expression, gt_frames=("00000",), hidden_frames=("00008", "00003", "00005"))
    manifest = Manifest((base.video,), (expression,), ())
    assert clip_sources(manifest, "train")[0].gt_frames == ("00000",)
    [source] = clip_sources(manifest, "train", full_annotations=True)
    assert (source.gt_frames, source.gt_folder) == (("00000", "00003", "00005", "00008"), "Annotations")
    clip = ClipDataset([source], fake_text, EXACT)[0]
    assert clip.frame_ids == source.gt_frames
    for label, mask in zip(clip.labels, _full_masks(dataset_root, clip.frame_ids), strict=True):
        assert torch.equal(label, torch.from_numpy(mask))


def _unlabelled(dataset_root, root, folders) -> Manifest:
    """synth0000 as an unlabelled video in the folder `unlabelled` of another root, holding `folders`."""
    for folder in folders:
        shutil.copytree(dataset_root / "train" / folder, root / "unlabelled" / folder)
    base = _source(root)
    video = replace(base.video, labelled=False, folder="unlabelled", annotated_frames=())
    return Manifest((video,), (replace(base.expression, gt_frames=()),), ())


def test_full_supervision_of_an_unlabelled_video_reads_its_folders_full_annotations(dataset_root, tmp_path):
    manifest = _unlabelled(dataset_root, tmp_path / "other", ("JPEGImages", "full_annotations"))
    assert clip_sources(manifest, "train") == []  # no GT and no pseudo-labels: nothing to learn from
    [source] = clip_sources(manifest, "train", full_annotations=True)
    assert (source.gt_frames, source.gt_folder) == (manifest.videos[0].frame_ids, "full_annotations")
    clip = ClipDataset([source], fake_text, EXACT)[0]
    assert len(clip.frame_ids) == 4 and torch.all(clip.weights == 1)
    for label, mask in zip(clip.labels, _full_masks(dataset_root, clip.frame_ids), strict=True):
        assert torch.equal(label, torch.from_numpy(mask))


def test_an_expression_without_ground_truth_trains_on_its_pseudo_labelled_frames(dataset_root, tmp_path):
    manifest = _unlabelled(dataset_root, tmp_path / "other", ("JPEGImages",))
    store, label, _ = _refined_store(tmp_path, ClipSource(manifest.expressions[0], manifest.videos[0], ()))
    for full_annotations in (False, True):  # no full_annotations/ and nothing hidden: the same source
        [source] = clip_sources(manifest, "train", refined_store=store, full_annotations=full_annotations)
        assert (source.gt_frames, source.pseudo_frames) == ((), ("00002",))
    clip = ClipDataset([source], fake_text, replace(EXACT, frames=3), refined_store=store)[0]
    assert clip.frame_ids == ("00001", "00002", "00003")  # the pseudo-labelled frame and its neighbours
    assert torch.equal(clip.labels[1], torch.from_numpy(resize_map(label[2], SIZE)))
    assert torch.allclose(clip.weights[1], torch.tensor(0.6), atol=1 / 255)
    assert torch.all(clip.labels[[0, 2]] == 255) and torch.all(clip.weights[[0, 2]] == 0)


def test_a_fixed_epoch_length_visits_every_source_over_the_epochs(dataset_root):
    sources = [replace(_source(dataset_root), expression=replace(_source(dataset_root).expression, expression_id=name))
               for name in "abcde"]  # fmt: skip
    dataset = ClipDataset(sources, fake_text, ClipSpec(frames=2, size=SIZE), clips=3, seed=4)
    assert len(dataset) == 3
    seen = []
    for epoch in range(6):
        dataset.set_epoch(epoch)
        drawn = [dataset[i].expression_id for i in range(3)]
        assert len(set(drawn)) == 3  # no source twice while others wait
        seen += drawn
    assert set(seen) == set("abcde")  # more sources than clips: each epoch draws other ones
    again = ClipDataset(sources, fake_text, ClipSpec(frames=2, size=SIZE), clips=3, seed=4)
    again.set_epoch(5)
    assert [again[i].expression_id for i in range(3)] == seen[-3:]  # the same on any worker
    assert len(ClipDataset(sources, fake_text, ClipSpec(), samples_per_source=2)) == 10
    assert len(ClipDataset([], fake_text, ClipSpec(), clips=7)) == 0


def test_loader_processes_kept_across_epochs_read_the_same_clips_as_one_process(dataset_root):
    """The epoch reaches loader processes with every index: kept across epochs, they hold the dataset copy made when
    they started, which `ClipDataset.set_epoch` in the training process would never reach."""
    sources = [replace(_source(dataset_root), expression=replace(_source(dataset_root).expression, expression_id=name))
               for name in "abc"]  # fmt: skip
    dataset = ClipDataset(sources, fake_text, ClipSpec(frames=3, size=SIZE), seed=2, samples_per_source=2)

    def sampler():
        return torch.utils.data.DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)

    def content(batches):
        return [(b["expression_ids"], b["frames"].numpy().tobytes(), b["labels"].numpy().tobytes(),
                 b["weights"].numpy().tobytes()) for b in batches]  # fmt: skip

    def read(workers):
        loader = clip_loader(dataset, sampler(), batch_size=2, workers=workers)
        assert loader.persistent_workers == (workers > 0)
        epochs = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            epochs.append(content(loader))
        return epochs

    expected, order = [], sampler()
    for epoch in range(2):  # each epoch's clips indexed one by one in this process
        order.set_epoch(epoch)
        dataset.set_epoch(epoch)
        indices = list(order)
        expected.append(content(collate_clips([dataset[i] for i in indices[k : k + 2]]) for k in range(0, 6, 2)))
    assert expected[0] != expected[1]
    dataset.set_epoch(0)
    assert read(0) == expected
    assert read(2) == expected
    fresh = ClipDataset(sources, fake_text, dataset.spec, seed=2, samples_per_source=2)
    dataset.set_epoch(1)
    assert torch.equal(dataset[(0, 4)].frames, fresh[4].frames)  # an (epoch, index) key names its own epoch


@pytest.mark.parametrize("factor", [0.9, 0.97531, 1.0, 1.1])
def test_brightening_through_a_table_gives_the_per_pixel_float32_values(factor):
    frames = np.random.default_rng(3).integers(0, 256, (3, 3, 17, 19), dtype=np.uint8)
    expected = np.clip(frames.astype(np.float32) * factor, 0, 255).astype(np.uint8)
    brightened = brighten(frames, factor)
    assert brightened.dtype == np.uint8 and np.array_equal(brightened, expected)
    assert factor == 1.0 or not np.array_equal(brightened, frames)


def test_unlabelled_share_sets_the_share_of_clips_from_sources_without_ground_truth(dataset_root):
    base = _source(dataset_root)
    named = [replace(base, expression=replace(base.expression, expression_id=name)) for name in "abcdefgh"]
    # a, b have ground truth; c..h (6 of 8) only pseudo-labels, as unlabelled videos do
    sources = named[:2] + [replace(source, gt_frames=(), pseudo_frames=("00003",)) for source in named[2:]]
    unlabelled = {source.expression.expression_id for source in sources[2:]}

    def drawn(dataset, epoch):
        dataset.set_epoch(epoch)
        return [dataset.sources[dataset._source_index(epoch, i)].expression.expression_id for i in range(len(dataset))]

    for share, clips in ((0.25, 40), (0.5, 10), (0.0, 12), (1.0, 12)):
        dataset = ClipDataset(sources, fake_text, ClipSpec(frames=2, size=SIZE), clips=clips, unlabelled_share=share)
        for epoch in range(3):
            ids = drawn(dataset, epoch)
            assert len(ids) == clips and sum(i in unlabelled for i in ids) == round(share * clips)
        if clips == 40:  # 10 of 6 unlabelled and 30 of 2 labelled: each group cycled through, none left out
            assert set(ids) == {"a", "b"} | unlabelled
    # without a fixed epoch length the share applies to sources x samples_per_source clips
    dataset = ClipDataset(
        sources, fake_text, ClipSpec(frames=2, size=SIZE), samples_per_source=2, unlabelled_share=0.25
    )
    assert len(dataset) == 16 and sum(i in unlabelled for i in drawn(dataset, 0)) == 4
    # None: every source alike, the same draws as before the option existed
    plain = ClipDataset(sources, fake_text, ClipSpec(frames=2, size=SIZE), clips=8, seed=4)
    assert sum(i in unlabelled for i in drawn(plain, 0)) == 6
