"""Accuracy, the share of non-finite outputs, and the expected calibration error."""

from __future__ import annotations

import math

import pytest
import torch

from bnkit.study.models.scores import accuracy, ece, nonfinite


def test_ece_on_a_hand_made_example() -> None:
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right): two bins
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 0])
    # bin of 0.9: acc 0.5, conf 0.9 -> gap 0.4, weight 1/2; bin of 0.6: acc 1, conf 0.6 -> 0.4
    assert ece(probs.log(), labels) == pytest.approx(0.4)
    assert accuracy(probs.log(), labels) == pytest.approx(0.75)


def test_ece_is_zero_when_confidence_equals_accuracy() -> None:
    probs = torch.tensor([[0.75, 0.25]] * 4, dtype=torch.float64)
    assert ece(probs.log(), torch.tensor([0, 0, 0, 1])) == pytest.approx(0.0, abs=1e-12)


def test_ece_bins_are_right_closed() -> None:
    # confidence exactly 2/3 falls in bin (9/15, 10/15]; with 3 bins, in (1/3, 2/3]
    logits = torch.tensor([[math.log(2.0), 0.0]], dtype=torch.float64)
    assert ece(logits, torch.tensor([0]), bins=3) == pytest.approx(1 / 3)


def test_nonfinite_logits_count_as_wrong_and_are_left_out_of_ece() -> None:
    logits = torch.tensor([[2.0, 0.0], [float("nan"), 0.0], [0.0, float("inf")]])
    labels = torch.tensor([0, 0, 1])
    assert accuracy(logits, labels) == pytest.approx(1 / 3)
    assert nonfinite(logits) == pytest.approx(2 / 3)
    assert ece(logits, labels) == pytest.approx(ece(logits[:1], labels[:1]))
    assert math.isnan(ece(logits[1:], labels[1:]))
