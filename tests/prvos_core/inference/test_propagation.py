"""Propagation inference: output shape and range, same computation as clip training, bounded memory,
streaming."""

from __future__ import annotations

import pytest
import torch

from prvos_core.inference.propagation import MemoryBank, iter_propagate, propagate
from prvos_core.model.builders import build_model

TEXT_DIM = 384


@pytest.fixture(scope="module")
def model():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    yield build_model("tiny", text_dim=TEXT_DIM, pretrained=False).eval()
    torch.set_num_threads(previous)


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


def test_memory_bank_keeps_first_and_recent_in_order():
    bank = MemoryBank(recent=2)
    for index in range(5):
        bank.add(torch.full((1, 1, 1, 1), float(index)), torch.full((1, 2, 1, 1), float(index)))
        assert len(bank) == min(index + 1, 3)
    keys, values = bank.stacked()
    assert keys.shape == (1, 1, 3, 1, 1) and values.shape == (1, 2, 3, 1, 1)
    assert keys.flatten().tolist() == [0.0, 3.0, 4.0]
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
