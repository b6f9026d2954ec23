"""Tests of prvos_core.labels: the one p > 0.5 rule, its confidence and the ignore value."""

from __future__ import annotations

import numpy as np
import pytest

from prvos_core.labels import IGNORE_LABEL, binary_mask, confidence, predicted_foreground


def test_hard_prediction_and_confidence():
    p = np.array([0.0, 0.3, 0.5, 0.51, 1.0], dtype=np.float32)
    np.testing.assert_array_equal(predicted_foreground(p), [False, False, False, True, True])
    np.testing.assert_array_equal(binary_mask(p), np.array([0, 0, 0, 1, 1], dtype=np.uint8))
    assert binary_mask(p).dtype == np.uint8
    np.testing.assert_allclose(confidence(p), [1.0, 0.7, 0.5, 0.51, 1.0])


def test_the_ignore_value_is_what_the_loss_skips():
    import torch

    from prvos_core.model.loss import weighted_cross_entropy

    logits = torch.zeros(1, 2, 1, 2)
    labels = torch.tensor([[[1, IGNORE_LABEL]]])
    # Only the labelled pixel counts: its loss is log 2 whatever the ignored pixel holds.
    assert float(weighted_cross_entropy(logits, labels)) == pytest.approx(np.log(2.0))
