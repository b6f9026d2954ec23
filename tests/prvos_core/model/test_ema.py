"""EMA teacher: the averaging math, buffers copied, eval mode, state dicts like the student's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prvos_core.model.builders import build_model
from prvos_core.model.ema import EmaTeacher


def _toy(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _perturb(student: nn.Module, seed: int) -> None:
    """Change every parameter and, with a forward pass in train mode, the batch-norm buffers."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(torch.randn_like(parameter))
    student.train()
    student(torch.randn(8, 3))


def test_update_is_decay_times_teacher_plus_one_minus_decay_times_student():
    student = _toy(0)
    teacher = EmaTeacher(student, decay=0.9)
    start = {k: v.clone() for k, v in student.state_dict().items()}
    _perturb(student, 1)
    teacher.update(student)
    after_one = {k: v.clone() for k, v in student.state_dict().items()}
    for name, _ in student.named_parameters():
        expected = 0.9 * start[name] + 0.1 * after_one[name]
        assert torch.allclose(teacher.model.state_dict()[name], expected, atol=1e-6), name

    _perturb(student, 2)
    teacher.update(student)
    for name, value in student.named_parameters():
        # Two steps: 0.9 * (0.9 * w0 + 0.1 * w1) + 0.1 * w2
        expected = 0.81 * start[name] + 0.09 * after_one[name] + 0.1 * value.detach()
        assert torch.allclose(teacher.model.state_dict()[name], expected, atol=1e-6), name


def test_buffers_are_copied_not_averaged():
    student = _toy(0)
    teacher = EmaTeacher(student, decay=0.99)
    _perturb(student, 1)
    _perturb(student, 2)
    teacher.update(student)
    batch_norm = teacher.model[1]
    assert torch.equal(batch_norm.running_mean, student[1].running_mean)
    assert torch.equal(batch_norm.running_var, student[1].running_var)
    assert int(batch_norm.num_batches_tracked) == int(student[1].num_batches_tracked) == 2


def test_decay_bounds_and_extremes():
    with pytest.raises(ValueError, match="decay"):
        EmaTeacher(_toy(0), decay=1.5)
    student = _toy(0)
    copying, frozen = EmaTeacher(student, decay=0.0), EmaTeacher(student, decay=1.0)
    start = {k: v.clone() for k, v in student.state_dict().items()}
    _perturb(student, 1)
    copying.update(student)
    frozen.update(student)
    for name, value in student.named_parameters():
        assert torch.equal(copying.model.state_dict()[name], value.detach())
        assert torch.equal(frozen.model.state_dict()[name], start[name])


def test_teacher_is_independent_stays_in_eval_and_needs_no_grad():
    student = build_model("tiny", text_dim=384, pretrained=False)
    teacher = EmaTeacher(student, decay=0.5)
    assert not teacher.model.training
    assert not any(module.training for module in teacher.model.modules())
    assert not any(parameter.requires_grad for parameter in teacher.model.parameters())
    with torch.no_grad():
        student.decoder.predict.bias.add_(1.0)
    assert not torch.equal(student.decoder.predict.bias, teacher.model.decoder.predict.bias)
    student.train()
    teacher.update(student)
    assert not teacher.model.training


def test_state_dict_saves_and_loads_like_a_student():
    student = _toy(0)
    teacher = EmaTeacher(student, decay=0.9)
    _perturb(student, 1)
    teacher.update(student)
    state = teacher.state_dict()
    assert list(state) == list(student.state_dict())

    fresh_student = _toy(5)
    fresh_student.load_state_dict(state)
    restored = EmaTeacher(_toy(6), decay=0.9)
    restored.load_state_dict(state)
    for name, value in state.items():
        assert torch.equal(fresh_student.state_dict()[name], value)
        assert torch.equal(restored.model.state_dict()[name], value)
    assert not restored.model.training
    with pytest.raises(RuntimeError, match="Missing key"):
        restored.load_state_dict({k: v for k, v in state.items() if k != "0.weight"})
