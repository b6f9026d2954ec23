"""Tests of prvos_core.inference.predict: which weights run, lazy frame decoding, the first-frame ground-truth start,
the teacher's start from every ground-truth frame (both ways), flip test-time augmentation, bilinear upsampling,
and the Ray-free Predictor (checkpoint + text cache + manifest -> an expression's probabilities) with the checks
made before a fleet of them starts, on a tiny synthetic video and a seeded random tiny model."""

from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import prvos_core.inference.predict as predict
from prvos_core.data.frames import decode_frame, resize_frame
from prvos_core.data.manifest import Expression, Manifest, Video, write_manifest
from prvos_core.datasets.synth import generate_synthetic
from prvos_core.errors import CheckpointError, DataError
from prvos_core.inference.predict import (
    Predictor,
    VideoFrames,
    check_prediction_inputs,
    choose_device,
    load_predictor,
    names_a_side,
    predict_expression,
    predictor_identity,
    upsample_prob,
)
from prvos_core.inference.propagation import AnchoredPropagation, propagate
from prvos_core.model.builders import build_model
from prvos_core.model.checkpoint import save_checkpoint
from prvos_core.model.ema import EmaTeacher
from prvos_core.text.cache import TextCache, TextNotCachedError

SIZE = (32, 32)
TEXT_DIM = 16


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Video:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_synthetic(root, videos=1, valid_videos=1, frames=6, size=(48, 48), label_every=5, seed=7)
    frames = tuple(f"{t:05d}" for t in range(6))
    meta = json.loads((root / "train" / "meta.json").read_text())
    assert meta["videos"]["synth0000"]["objects"]["1"]["frames"] == ["00000", "00005"]  # what the records say
    return Video("synth0000", "train", str(root), frames, ("00000", "00005"), 48, 48)


def _expression(video: Video, object_id: str = "1", gt_frames: tuple[str, ...] = ("00000", "00005")) -> Expression:
    return Expression("e1", "0", "train", video.video_id, object_id, "triangle", "the yellow triangle", gt_frames,
                      video.frame_ids)  # fmt: skip


def _eager_frames(video: Video) -> torch.Tensor:
    """The video's frames (T, 3, h, w) at SIZE, decoded up front."""
    paths = [f"{video.dataset_root}/train/JPEGImages/{video.video_id}/{frame}.jpg" for frame in video.frame_ids]
    return torch.from_numpy(np.stack([resize_frame(decode_frame(p), SIZE) for p in paths])).float() / 255


def _gt_mask(video: Video, frame: str) -> torch.Tensor:
    """Object 1's mask (h, w) float {0, 1} at SIZE, independent of prvos_core's mask reader: palette index == object
    id, then nearest resize."""
    ids = np.array(Image.open(f"{video.dataset_root}/train/Annotations/{video.video_id}/{frame}.png"))
    mask = cv2.resize((ids == 1).astype(np.uint8), SIZE[::-1], interpolation=cv2.INTER_NEAREST)
    assert 0 < mask.sum() < mask.size
    return torch.from_numpy(mask).float()


def _run(model, video: Video, expression: Expression, text, **options) -> np.ndarray:
    """predict_expression's probabilities (T, h, w), memory of 2 frames."""
    frames = predict_expression(model, video, expression, *text, SIZE, memory_frames=2, **options)
    return np.stack([prob for _, prob in frames])


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    """A student and an EMA teacher whose weights differ everywhere, both seeded."""
    torch.manual_seed(0)
    student = build_model("tiny", text_dim=TEXT_DIM, pretrained=False)
    teacher = EmaTeacher(student, decay=0.5)
    with torch.no_grad():
        for parameter in teacher.model.parameters():
            parameter.add_(0.05)
    return student, teacher


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, models) -> str:
    student, teacher = models
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    return str(save_checkpoint(folder, student, ema=teacher, meta={"epoch": 0, "step": 0, "round": 0}))


@pytest.fixture
def text() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    words = torch.randn(6, TEXT_DIM, generator=generator)
    return words, torch.tensor([True, True, True, True, False, False])


class _SeededEncoder:
    """A stand-in text encoder for the cache: seeded random token features (6 tokens, 4 real) per text."""

    identity, max_tokens, dim = "seeded-test-encoder", 6, TEXT_DIM

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(len(texts))
        words = torch.randn(len(texts), self.max_tokens, self.dim, generator=generator)
        return words, torch.tensor([[True] * 4 + [False] * 2] * len(texts))


@pytest.fixture(scope="module")
def split_on_disk(tmp_path_factory, video) -> tuple[str, str, str]:
    """The video's manifest (one expression) and a text cache holding its text: (manifest dir, cache, identity)."""
    folder = tmp_path_factory.mktemp("split")
    write_manifest(str(folder / "manifest"), Manifest((video,), (_expression(video),), ()))
    cache = TextCache(str(folder / "text.zarr"), _SeededEncoder.identity)
    cache.build([_expression(video).text], _SeededEncoder())
    return str(folder / "manifest"), str(folder / "text.zarr"), _SeededEncoder.identity


def _same_weights(left: torch.nn.Module, right: torch.nn.Module) -> bool:
    right_state = right.state_dict()
    return all(torch.equal(value, right_state[key]) for key, value in left.state_dict().items())


def test_the_ema_teacher_runs_when_asked_and_saved_else_the_student(tmp_path, models, checkpoint):
    student, teacher = models
    ema = load_predictor(checkpoint, "ema", torch.device("cpu"))
    raw = load_predictor(checkpoint, "student", torch.device("cpu"))
    assert not ema.training and not raw.training
    assert _same_weights(ema, teacher.model) and not _same_weights(ema, student)
    assert _same_weights(raw, student)
    without_ema = str(save_checkpoint(tmp_path / "plain", student, meta={"epoch": 0, "step": 0, "round": 0}))
    assert _same_weights(load_predictor(without_ema, "ema", torch.device("cpu")), student)


def test_the_predictor_identity_names_the_weights_file_that_runs(tmp_path, models, checkpoint):
    student, teacher = models
    assert predictor_identity(checkpoint, "ema").startswith(f"{checkpoint}#ema:")
    assert predictor_identity(checkpoint, "student").startswith(f"{checkpoint}#student:")
    plain = tmp_path / "plain"
    save_checkpoint(plain, student, meta={"epoch": 0, "step": 0, "round": 0})
    assert predictor_identity(str(plain), "ema") == predictor_identity(str(plain), "student")
    before = predictor_identity(str(plain), "student")
    save_checkpoint(plain, teacher.model, meta={"epoch": 1, "step": 5, "round": 0})  # retrained, same folder
    assert predictor_identity(str(plain), "student") != before


def test_predictions_equal_propagation_over_eagerly_decoded_frames(video, models, text, one_torch_thread):
    student, _ = models
    words, word_mask = text
    expected = propagate(student.eval(), _eager_frames(video), words, word_mask, None, 2).numpy()
    got = list(predict_expression(student, video, _expression(video), words, word_mask, SIZE,
                                  first_mask_from_gt=False, memory_frames=2))  # fmt: skip
    assert [index for index, _ in got] == list(range(6))
    assert all(prob.dtype == np.float32 and prob.shape == SIZE for _, prob in got)
    np.testing.assert_array_equal(np.stack([prob for _, prob in got]), expected)


def test_the_first_frame_starts_from_its_ground_truth_mask(video, models, text, one_torch_thread):
    student, _ = models
    gt = _gt_mask(video, "00000")

    def run(expression: Expression, from_gt: bool) -> np.ndarray:
        return _run(student, video, expression, text, first_mask_from_gt=from_gt)

    started = run(_expression(video), True)
    np.testing.assert_array_equal(started[0], gt.numpy())
    # Evaluation's protocol (anchors "first", the default): the forward propagation from that mask, bit for bit.
    np.testing.assert_array_equal(started, propagate(student, _eager_frames(video), *text, gt, 2).numpy())
    text_only = run(_expression(video), False)
    assert not np.array_equal(started[1:], text_only[1:])  # the mask in memory steers the later frames
    # No start from ground truth when the first frame has no mask of this object, or no object is named.
    np.testing.assert_array_equal(run(_expression(video, gt_frames=("00005",)), True), text_only)
    np.testing.assert_array_equal(run(_expression(video, object_id=""), True), text_only)


def test_the_teacher_starts_from_every_ground_truth_frame(video, models, text, one_torch_thread):
    student, _ = models
    masks = {0: _gt_mask(video, "00000"), 5: _gt_mask(video, "00005")}
    anchored = _run(student, video, _expression(video), text, first_mask_from_gt=True, anchors="all")
    for t, mask in masks.items():
        np.testing.assert_array_equal(anchored[t], mask.numpy())  # each ground-truth frame reproduced exactly
    expected = torch.stack(list(AnchoredPropagation(student, _eager_frames(video), *text, masks, 2)))
    np.testing.assert_array_equal(anchored, expected.numpy())
    first_only = _run(student, video, _expression(video), text, first_mask_from_gt=True, anchors="first")
    assert not np.array_equal(anchored[1:5], first_only[1:5])  # the mask at frame 5 reaches back
    # first_mask_from_gt off: no anchor at all (the text alone), whatever `anchors` says.
    np.testing.assert_array_equal(
        _run(student, video, _expression(video), text, first_mask_from_gt=False, anchors="all"),
        _run(student, video, _expression(video), text, first_mask_from_gt=False),
    )


def test_a_ground_truth_frame_at_the_end_propagates_backward(video, models, text, one_torch_thread):
    student, _ = models
    last = _gt_mask(video, "00005")
    got = _run(student, video, _expression(video, gt_frames=("00005",)), text, first_mask_from_gt=True, anchors="all")
    backward = propagate(student, _eager_frames(video).flip(0), *text, last, 2).flip(0)
    np.testing.assert_array_equal(got, backward.numpy())
    np.testing.assert_array_equal(got[5], last.numpy())


def test_an_unlabelled_video_has_no_anchor(video, models, text, one_torch_thread):
    """The teacher never reads a mask of an unlabelled video, even one the records list."""
    student, _ = models
    unlabelled = replace(video, labelled=False)
    got = _run(student, unlabelled, _expression(video), text, first_mask_from_gt=True, anchors="all")
    np.testing.assert_array_equal(got, _run(student, video, _expression(video), text, first_mask_from_gt=False))


def test_flip_averages_with_the_mirrored_video_flipped_back(video, models, text, one_torch_thread):
    student, _ = models
    masks = {0: _gt_mask(video, "00000"), 5: _gt_mask(video, "00005")}
    frames = _eager_frames(video)
    plain = torch.stack(list(AnchoredPropagation(student, frames, *text, masks, 2)))
    mirrored_masks = {t: mask.flip(-1) for t, mask in masks.items()}
    mirrored = torch.stack(list(AnchoredPropagation(student, frames.flip(-1), *text, mirrored_masks, 2))).flip(-1)
    got = _run(student, video, _expression(video), text, first_mask_from_gt=True, anchors="all", flip=True)
    np.testing.assert_array_equal(got, ((plain + mirrored) / 2).numpy())
    assert not torch.equal(plain, mirrored)  # the random network is not mirror-symmetric
    for t, mask in masks.items():
        np.testing.assert_array_equal(got[t], mask.numpy())  # both passes reproduce the anchors
    # An expression that names a side keeps the plain prediction: the mirrored video contradicts it.
    left = replace(_expression(video), text="the yellow triangle on the left")
    np.testing.assert_array_equal(
        _run(student, video, left, text, first_mask_from_gt=True, anchors="all", flip=True), plain.numpy()
    )


def test_a_side_is_named_by_a_whole_word():
    for text in ("the cat on the Left", "right-most dog", "the leftmost car", "person at the rightmost edge"):
        assert names_a_side(text)
    for text in ("a bright light", "the leftover cake", "an upright piano", "a copyrighted logo"):
        assert not names_a_side(text)


def test_each_frame_is_decoded_once_for_both_passes_and_the_mirrored_video(video, models, text, monkeypatch):
    student, _ = models
    decoded = []
    monkeypatch.setattr(predict, "decode_frame", lambda uri, reduce=1: decoded.append(uri) or decode_frame(uri, reduce))
    _run(student, video, _expression(video), text, first_mask_from_gt=True, anchors="all", flip=True)
    assert sorted(decoded) == sorted(set(decoded)) and len(decoded) == 6


def test_frames_are_decoded_one_at_a_time_as_the_model_asks(video, models, text, monkeypatch):
    student, _ = models
    decoded = []

    def counting_decode(uri: str, reduce: int = 1) -> np.ndarray:
        decoded.append(uri)
        return decode_frame(uri, reduce)

    monkeypatch.setattr(predict, "decode_frame", counting_decode)
    frames = predict_expression(student, video, _expression(video), *text, SIZE, first_mask_from_gt=False,
                                memory_frames=2)  # fmt: skip
    next(frames)
    assert len(decoded) == 1
    next(frames)
    assert len(decoded) == 2
    assert len(list(frames)) == 4 and [u.rsplit("/", 1)[1] for u in decoded] == [f"{t:05d}.jpg" for t in range(6)]


def test_upsampling_is_bilinear_at_the_original_size():
    prob = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    big = upsample_prob(prob, (4, 6))
    assert big.shape == (4, 6) and big.dtype == np.float32
    assert 0.0 <= big.min() and big.max() <= 1.0
    # Exact bilinear weights at half-pixel centres: x2 vertically gives 0.75/0.25 mixes of the two rows.
    np.testing.assert_allclose(big[:, 0], [0.0, 0.25, 0.75, 1.0], atol=1e-6)
    # Thresholded at 0.5 it is the nearest-neighbour enlargement of the 2 x 2 pattern.
    nearest = np.kron(prob, np.ones((2, 3), dtype=np.float32))
    np.testing.assert_array_equal(big > 0.5, nearest > 0.5)
    np.testing.assert_allclose(upsample_prob(np.full((3, 3), 0.3, np.float32), (7, 5)), np.full((7, 5), 0.3), atol=1e-6)


def test_the_device_is_cuda_only_when_gpus_are_given_and_visible():
    assert choose_device(0.0) == torch.device("cpu")
    assert choose_device(1.0) == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_a_named_device_resolves_auto_to_cuda_only_when_visible_and_refuses_the_unknown():
    from prvos_core.errors import UserError
    from prvos_core.inference.predict import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(UserError, match="device 'tpu' is unknown; use auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no GPU is visible"):
            resolve_device("cuda")


@pytest.mark.parametrize("weights", ["student", "ema"])
def test_a_predictor_labels_an_expression_as_propagation_does(video, models, checkpoint, split_on_disk, weights,
                                                              one_torch_thread):  # fmt: skip
    """What each actor of infer and evaluate runs, here without Ray: the checkpoint's weights, the cached text."""
    manifest_dir, text_cache, identity = split_on_disk
    predictor = Predictor(checkpoint, weights, text_cache, identity, manifest_dir, "train", memory_frames=2)
    expression, found = predictor.records("e1")
    assert expression == _expression(video) and found == video
    got = list(predictor.predict(expression, video, SIZE, first_mask_from_gt=False))
    assert [index for index, _ in got] == list(range(6))
    assert all(prob.dtype == np.float32 and prob.shape == SIZE for _, prob in got)

    student, teacher = models
    model = student if weights == "student" else teacher.model
    words, word_mask = TextCache(text_cache, identity).lookup([expression.text])  # float16 rows, as cached
    paths = [f"{video.dataset_root}/train/JPEGImages/{video.video_id}/{frame}.jpg" for frame in video.frame_ids]
    frames = torch.from_numpy(np.stack([resize_frame(decode_frame(p), SIZE) for p in paths])).float() / 255
    expected = propagate(model.eval(), frames, words[0], word_mask[0], None, 2).numpy()
    np.testing.assert_array_equal(np.stack([prob for _, prob in got]), expected)


def test_prediction_inputs_are_checked_in_one_line_each(video, checkpoint, split_on_disk, tmp_path):
    manifest_dir, text_cache, identity = split_on_disk
    manifest, expressions = check_prediction_inputs(manifest_dir, "train", checkpoint, text_cache, identity)
    assert manifest.videos == (video,) and expressions == [_expression(video)]
    with pytest.raises(DataError, match="split 'valid' has no expressions in the manifest"):
        check_prediction_inputs(manifest_dir, "valid", checkpoint, text_cache, identity)
    with pytest.raises(CheckpointError, match="checkpoint.json not found"):
        check_prediction_inputs(manifest_dir, "train", str(tmp_path), text_cache, identity)
    unknown = replace(_expression(video), text="a text the cache never saw")
    write_manifest(str(tmp_path / "manifest"), Manifest((video,), (unknown,), ()))
    with pytest.raises(TextNotCachedError, match="'a text the cache never saw' is not in the text cache"):
        check_prediction_inputs(str(tmp_path / "manifest"), "train", checkpoint, text_cache, identity)


@pytest.mark.parametrize("flip", [False, True])
def test_expressions_sharing_a_video_get_the_same_bits_and_each_frame_is_encoded_once(video, models, text, flip):
    student, teacher = models[0].eval(), models[1].model.eval()
    expressions = [_expression(video), replace(_expression(video), expression_id="e2", exp_key="1"),
                   replace(_expression(video, gt_frames=("00005",)), expression_id="e3", exp_key="2")]  # fmt: skip
    options = {"first_mask_from_gt": True, "anchors": "all", "flip": flip}
    alone = [_run(teacher, video, expression, text, **options) for expression in expressions]
    shared = VideoFrames(teacher, video, SIZE)
    together = [_run(teacher, video, expression, text, frames=shared, **options) for expression in expressions]
    for own, with_others in zip(alone, together, strict=True):
        np.testing.assert_array_equal(own, with_others)
    # Three expressions, anchored both ways (and mirrored): the backbone ran once per frame and view.
    assert shared.encoded == len(video.frame_ids) * (2 if flip else 1)
    with pytest.raises(ValueError, match="do not fit"):
        list(
            predict_expression(
                student, video, expressions[0], *text, SIZE, first_mask_from_gt=True, memory_frames=2, frames=shared
            )
        )
