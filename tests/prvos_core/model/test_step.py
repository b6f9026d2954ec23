"""The training step's device choices: precision per device and name, a bf16 and a loss-scaled fp16 step on the CPU,
channels-last and compiled students that answer as the plain one and keep its state_dict keys."""

from __future__ import annotations

import copy

import pytest
import torch

from prvos_core.model.builders import build_model
from prvos_core.model.ema import EmaTeacher
from prvos_core.model.loss import clip_loss
from prvos_core.model.step import (
    Precision,
    forward,
    grad_scaler,
    model_frames,
    optimizer_step,
    prepare_student,
    resolve_precision,
)

CPU = torch.device("cpu")


def _model():
    torch.manual_seed(0)
    return build_model("tiny", text_dim=16, pretrained=False)


def _clip(size=(32, 32), frames=2):
    """A uint8 clip batch (1,T,3,H,W), its words and a label map half object, half background."""
    generator = torch.Generator().manual_seed(1)
    clip = torch.randint(0, 256, (1, frames, 3, *size), dtype=torch.uint8, generator=generator)
    words = torch.randn(1, 4, 16, generator=generator)
    labels = torch.zeros(1, frames, *size, dtype=torch.long)
    labels[..., : size[1] // 2] = 1
    return clip, words, torch.ones(1, 4, dtype=torch.bool), labels, torch.ones(1, frames, *size)


def _loss(model, precision):
    clip, words, word_mask, labels, weights = _clip()
    logits = forward(model, model_frames(clip, CPU, channels_last=False), words, word_mask, precision)
    assert logits.dtype == torch.float32 and logits.shape == (1, 2, 2, 32, 32)
    return clip_loss(logits, labels, weights, rest_weight=1.0, dice_weight=0.0).total


def _weights(model):
    return {name: value.detach().clone() for name, value in model.named_parameters() if value.requires_grad}


def _moved(before, model) -> bool:
    return any(not torch.equal(before[name], value) for name, value in model.named_parameters() if name in before)


def test_precision_per_device_and_name(monkeypatch):
    assert resolve_precision("auto", "cpu") == Precision(None, scaled=False)
    assert resolve_precision("fp32", "cpu") == Precision(None, scaled=False)
    assert resolve_precision("bf16", "cpu") == Precision(torch.bfloat16, scaled=False)
    assert resolve_precision("fp16", CPU) == Precision(torch.float16, scaled=True)
    assert resolve_precision("fp32", "cuda") == Precision(None, scaled=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_precision("auto", "cuda:0") == Precision(torch.bfloat16, scaled=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolve_precision("auto", "cuda") == Precision(torch.float16, scaled=True)  # e.g. a V100, T4
    assert resolve_precision("bf16", "cuda").name == "bf16"
    assert not grad_scaler("cpu", resolve_precision("bf16", "cpu")).is_enabled()
    assert grad_scaler("cpu", resolve_precision("fp16", "cpu")).is_enabled()
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp8", "cpu")


def test_a_bf16_step_on_the_cpu_runs_in_bf16_and_moves_the_weights():
    model = _model().train()
    seen = []
    model.key_projection.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    precision = resolve_precision("bf16", CPU)
    scaler = grad_scaler(CPU, precision)
    before = _weights(model)
    loss = _loss(model, precision)
    optimizer_step(loss, optimizer, scaler)
    assert seen == [torch.bfloat16]  # the convolutions ran under autocast
    assert torch.isfinite(loss) and _moved(before, model)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights themselves stay fp32


def test_an_fp16_step_on_the_cpu_scales_the_loss_and_skips_an_overflowed_step():
    model = _model().train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    precision = resolve_precision("fp16", CPU)
    # A scale far past fp16's range overflows the gradients: the step is skipped and the scale backs off.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)
    before = _weights(model)
    optimizer_step(_loss(model, precision), optimizer, scaler)
    assert not _moved(before, model) and scaler.get_scale() == 2.0**59
    # The default scale: a step that runs (the scale stays), or backs off until one does.
    scaler = grad_scaler(CPU, precision)
    for _ in range(8):
        scale = scaler.get_scale()
        loss = _loss(model, precision)
        optimizer_step(loss, optimizer, scaler)
        if scaler.get_scale() == scale:
            break
        assert scaler.get_scale() == scale / 2 and not _moved(before, model)
    assert torch.isfinite(loss) and _moved(before, model)


def test_channels_last_frames_and_student_give_the_same_logits():
    plain = _model().eval()
    student = prepare_student(copy.deepcopy(plain), CPU, channels_last=True, compile=False)
    assert student.key_projection.weight.is_contiguous(memory_format=torch.channels_last)
    clip, words, word_mask, _, _ = _clip(size=(64, 64))
    frames = model_frames(clip, CPU, channels_last=True)
    assert frames.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)  # what the backbone receives
    assert torch.equal(frames, model_frames(clip, CPU, channels_last=False))
    with torch.no_grad():
        expected = plain(model_frames(clip, CPU, channels_last=False), words, word_mask)
        logits = student(frames, words, word_mask)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert student.state_dict().keys() == plain.state_dict().keys()


def test_a_compiled_student_gives_the_same_logits_and_keeps_its_keys():
    plain = _model().eval()
    # Dynamo's graph capture and AOT autograd as in training; inductor's kernel generation (minutes on a CPU) is
    # left to the GPU measurement (benchmarks/perf_gpu.py).
    student = prepare_student(copy.deepcopy(plain), CPU, channels_last=False, compile=True, backend="aot_eager")
    teacher = EmaTeacher(student, decay=0.9)
    assert student.state_dict().keys() == plain.state_dict().keys()  # no "_orig_mod." prefix
    assert teacher.state_dict().keys() == plain.state_dict().keys()
    assert teacher.model._compiled_call_impl is None  # the EMA copy is not compiled
    clip, words, word_mask, _, _ = _clip(size=(64, 64))
    frames = model_frames(clip, CPU, channels_last=False)
    with torch.no_grad():
        expected = plain(frames, words, word_mask)
        logits = student(frames, words, word_mask)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
