"""EMA teacher: an exponential moving average of the student's weights, the model that pseudo-labels.

After each optimiser step, `update(student)` sets every floating-point parameter to
    teacher = decay * teacher + (1 - decay) * student.
Buffers (batch-norm running statistics, counters) are copied from the student, not averaged: the student's
running statistics already are moving averages, and averaging integer counters is meaningless.

The teacher stays in eval mode (it labels, it never trains) and saves/loads like the student: its
`state_dict` has the student's keys.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


class EmaTeacher:
    """EMA copy of a student network.

    student: the network to follow (its current weights start the average). decay: in [0, 1]; 0 copies the
    student at every update, 1 never moves.
    """

    def __init__(self, student: nn.Module, decay: float) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(student).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """Move the teacher's parameters towards the student's; copy its buffers."""
        teacher_parameters = dict(self.model.named_parameters())
        student_parameters = dict(student.named_parameters())
        if teacher_parameters.keys() != student_parameters.keys():
            raise ValueError("EMA update from a network with other parameter names than the teacher's")
        for name, teacher_value in teacher_parameters.items():
            student_value = student_parameters[name].detach()
            if teacher_value.is_floating_point():
                # lerp: teacher + (1 - decay) * (student - teacher) == decay * teacher + (1 - decay) * student
                teacher_value.lerp_(student_value.to(teacher_value.dtype), 1.0 - self.decay)
            else:
                teacher_value.copy_(student_value)
        student_buffers = dict(student.named_buffers())
        for name, teacher_buffer in self.model.named_buffers():
            teacher_buffer.copy_(student_buffers[name])

    def state_dict(self) -> dict[str, Any]:
        """The teacher network's weights, under the student's keys."""
        return self.model.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load teacher weights (strict: every key must match)."""
        self.model.load_state_dict(state)
        self.model.eval()

    def to(self, device: torch.device | str) -> EmaTeacher:
        self.model.to(device)
        return self
