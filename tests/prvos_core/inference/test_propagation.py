"""Propagation inference: output shape and range, same computation as clip training, bounded memory,
streaming; the anchored propagation: anchors reproduced exactly, the backward and forward passes and their
fusion by distance, every anchor in each pass's memory, and the forward propagation as its one-anchor case."""

from __future__ import annotations

import pytest
import torch

from prvos_core.inference.propagation import AnchoredPropagation, MemoryBank, iter_propagate, propagate
from tests.prvos_core.inference.conftest import TEXT_DIM, tiny_eval_model


@pytest.fixture(scope="module")
def model():
    with tiny_eval_model(pretrained=False) as built:
        yield built


@pytest.fixture(scope="module")
def video():
    torch.manual_seed(1)
    frames = torch.rand(7, 3, 64, 64)
    words = torch.randn(5, TEXT_DIM)
    word_mask = torch.tensor([True, True, True, False, False])
    first_mask = torch.zeros(64, 64)
    first_mask[10:30, 20:40] = 1
    return frames, words, word_mask, first_mask


def test_output_is_a_float32_probability_per_frame(model, video):
    frames, words, word_mask, first_mask = video
    prob = propagate(model, frames, words, word_mask, first_mask)
    assert prob.shape == (7, 64, 64) and prob.dtype == torch.float32
    assert float(prob.min()) >= 0.0 and float(prob.max()) <= 1.0
    assert torch.equal(prob[0], first_mask)
    without_mask = propagate(model, frames, words, word_mask, None)
    assert without_mask.shape == (7, 64, 64) and not torch.equal(without_mask[0], first_mask)


@pytest.mark.parametrize("given_first_mask", [True, False])
def test_propagation_with_full_memory_equals_clip_training(model, video, given_first_mask):
    """forward_clip (training) and propagate (inference) chain the same named steps."""
    frames, words, word_mask, first_mask = video
    first = first_mask if given_first_mask else None
    prob = propagate(model, frames, words, word_mask, first, memory_size=len(frames))
    with torch.no_grad():
        clip_first = first_mask[None] if given_first_mask else None
        clip_prob = model.forward_clip(frames[None], words[None], word_mask[None], clip_first).softmax(2)[0, :, 1]
    start = 1 if given_first_mask else 0
    assert torch.allclose(prob[start:], clip_prob[start:], atol=1e-4)


def test_memory_holds_the_first_frame_and_the_most_recent_ones(model, video, monkeypatch):
    frames, words, word_mask, first_mask = video
    sizes = []
    read = model.read_memory

    def recording_read(query_key, memory_keys, memory_values):
        sizes.append(memory_keys.shape[2])
        return read(query_key, memory_keys, memory_values)

    monkeypatch.setattr(model, "read_memory", recording_read)
    propagate(model, frames, words, word_mask, first_mask, memory_size=2)
    assert sizes == [1, 2, 3, 3, 3, 3]
    sizes.clear()
    propagate(model, frames, words, word_mask, None, memory_size=0)
    assert sizes == [1, 1, 1, 1, 1, 1]


def test_memory_bank_keeps_the_anchors_and_the_recent_frames_in_order():
    def entry(value: float) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((1, 1, 1, 1), value), torch.full((1, 2, 1, 1), value)

    bank = MemoryBank(recent=2, anchors=[entry(-2.0)])
    bank.anchor(*entry(-1.0))
    for index in range(5):
        bank.add(*entry(float(index)))
        assert len(bank) == 2 + min(index + 1, 2)
    keys, values = bank.stacked()
    assert keys.shape == (1, 1, 4, 1, 1) and values.shape == (1, 2, 4, 1, 1)
    assert keys.flatten().tolist() == [-2.0, -1.0, 3.0, 4.0]
    without_recent = MemoryBank(recent=0)
    without_recent.anchor(*entry(0.0))
    without_recent.add(*entry(1.0))
    assert without_recent.stacked()[0].flatten().tolist() == [0.0]
    with pytest.raises(ValueError):
        MemoryBank(recent=-1)


def test_iterator_streams_frames_outside_inference_mode(model, video, monkeypatch):
    frames, words, word_mask, first_mask = video
    encoded = []
    encode = model.encode_frame
    monkeypatch.setattr(model, "encode_frame", lambda images: encoded.append(1) or encode(images))
    stream = iter_propagate(model, frames, words, word_mask, first_mask)
    first = next(stream)
    assert len(encoded) == 1 and first.shape == (64, 64)
    # The consumer's own code between frames runs outside inference mode.
    assert not torch.is_inference_mode_enabled()
    rest = list(stream)
    assert len(rest) == 6 and len(encoded) == 7


def test_train_mode_and_bad_shapes_are_refused(model, video):
    frames, words, word_mask, first_mask = video
    model.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            propagate(model, frames, words, word_mask, first_mask)
    finally:
        model.eval()
    with pytest.raises(ValueError, match=r"\(T,3,H,W\)"):
        propagate(model, frames[None], words, word_mask, first_mask)


def _masks(*frames: int) -> dict[int, torch.Tensor]:
    """A different box mask (64, 64) in {0, 1} on each of `frames`."""
    masks = {}
    for t in frames:
        masks[t] = torch.zeros(64, 64)
        masks[t][10 + 2 * t : 30 + 2 * t, 20:40] = 1
    return masks


def test_one_anchor_at_frame_0_is_the_forward_propagation_bit_for_bit(model, video):
    frames, words, word_mask, first_mask = video
    anchored = torch.stack(list(AnchoredPropagation(model, frames, words, word_mask, {0: first_mask}, 2)))
    assert torch.equal(anchored, propagate(model, frames, words, word_mask, first_mask, 2))


def test_one_anchor_at_the_last_frame_propagates_backward(model, video):
    """Frames before the only anchor come from the backward pass alone: the forward propagation of the reversed
    video from that anchor's mask, bit for bit."""
    frames, words, word_mask, first_mask = video
    anchored = torch.stack(list(AnchoredPropagation(model, frames, words, word_mask, {6: first_mask}, 2)))
    backward = propagate(model, frames.flip(0), words, word_mask, first_mask, 2).flip(0)
    assert torch.equal(anchored, backward)
    assert torch.equal(anchored[6], first_mask)
    assert not torch.equal(anchored[5], propagate(model, frames, words, word_mask, None, 2)[5])


def test_anchor_frames_are_their_masks_and_the_passes_are_fused_by_distance(model, video):
    frames, words, word_mask, _ = video
    masks = _masks(1, 5)
    anchored = AnchoredPropagation(model, frames, words, word_mask, masks, 2)
    fused = torch.stack(list(anchored))
    forward = dict(anchored.run(range(1, 7)))
    backward = dict(anchored.run(range(5, -1, -1)))
    for t, mask in masks.items():
        assert torch.equal(fused[t], mask)  # exactly 0/1, not a blend
        assert torch.equal(forward[t], mask) and torch.equal(backward[t], mask)
    assert torch.equal(fused[0], backward[0])  # no anchor before frame 0: backward only
    assert torch.equal(fused[6], forward[6])  # no anchor after frame 6: forward only
    # Between the anchors at 1 and 5: (d_b * forward + d_f * backward) / (d_f + d_b), the nearer anchor's pass
    # weighing more.
    for t, (d_forward, d_backward) in {2: (1, 3), 3: (2, 2), 4: (3, 1)}.items():
        expected = (d_backward * forward[t] + d_forward * backward[t]) / (d_forward + d_backward)
        assert torch.equal(fused[t], expected)
        assert not torch.equal(forward[t], backward[t])  # the passes differ, so the weights are tested
    assert float(fused.min()) >= 0.0 and float(fused.max()) <= 1.0


def test_each_pass_reads_every_anchor_and_its_recent_frames_and_encodes_each_frame_once(model, video, monkeypatch):
    frames, words, word_mask, _ = video
    sizes, encoded = [], []
    read, encode = model.read_memory, model.encode_frame

    def recording_read(query_key, memory_keys, memory_values):
        sizes.append(memory_keys.shape[2])
        return read(query_key, memory_keys, memory_values)

    monkeypatch.setattr(model, "read_memory", recording_read)
    monkeypatch.setattr(model, "encode_frame", lambda images: encoded.append(images) or encode(images))
    anchored = AnchoredPropagation(model, frames, words, word_mask, _masks(0, 6), memory_size=2)
    assert len(encoded) == 2  # the two anchors, once for both passes
    stream = iter(anchored)
    next(stream)
    assert len(encoded) == 2 + 5  # the backward pass ran whole: frames 5..1
    # then the forward pass, streamed: 1..5, on the features the backward pass kept
    assert len(list(stream)) == 6 and len(encoded) == 2 + 5
    assert sizes == [2, 3, 4, 4, 4] * 2  # both anchors always, plus up to 2 recent frames of the pass


def test_anchors_must_name_frames_of_the_video(model, video):
    frames, words, word_mask, first_mask = video
    for anchors in ({}, {7: first_mask}, {-1: first_mask}):
        with pytest.raises(ValueError, match=r"anchors must name at least one frame, each in 0\.\.6"):
            AnchoredPropagation(model, frames, words, word_mask, anchors)
