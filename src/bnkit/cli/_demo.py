"""The ``bnkit explain --demo`` walk-through: why a BatchNorm output is not ``weight·x + bias``.

The example is a classic forum question: a (1, 2, 3, 3) conv output went through
``BatchNorm2d(2)`` in ``train()`` with weight printed as ``[0.8352, 0.2056]`` and bias ``[0, 0]``,
and the first output printed as -1.6799 where ``0.8352 · -0.0403 = -0.0337`` was expected.

The question showed 4 decimals of each tensor. Rounded inputs do not reproduce the printed
output (channel 0's standard deviation is 0.027, so a rounding error of 5e-5 in an input moves
an output by up to 1.4e-3). ``INPUT`` and ``WEIGHT`` below are full-precision float32 values,
found by solving for values that print exactly as the question's input and weight *and* whose
BatchNorm output prints exactly as its output, so the demo reproduces every printed digit.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from bnkit.explain import explain

__all__ = ["PRINTED_INPUT", "PRINTED_OUTPUT", "demo_input", "demo_layer", "demo_text"]

INPUT = [
    [-0.040261537, 0.010328798, 0.01846831],
    [0.024038428, 0.053536784, 0.013723622],
    [0.02326885, 0.023917405, -0.020215316],
    [-0.10441344, -0.16643776, -0.23469499],
    [-0.17081954, -0.20917761, -0.23556197],
    [-0.22016719, -0.2412325, -0.2732874],
]
WEIGHT = [0.8352276, 0.2056047]

PRINTED_INPUT = [
    [-0.0403, 0.0103, 0.0185],
    [0.0240, 0.0535, 0.0137],
    [0.0233, 0.0239, -0.0202],
    [-0.1044, -0.1664, -0.2347],
    [-0.1708, -0.2092, -0.2356],
    [-0.2202, -0.2412, -0.2733],
]
PRINTED_OUTPUT = [
    [-1.6799, -0.0496, 0.2127],
    [0.3922, 1.3428, 0.0598],
    [0.3674, 0.3883, -1.0339],
    [0.4344, 0.1697, -0.1216],
    [0.1510, -0.0127, -0.1253],
    [-0.0596, -0.1495, -0.2863],
]


def _shape(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(1, 2, 3, 3)


def demo_input() -> Tensor:
    """The full-precision (1, 2, 3, 3) input."""
    return _shape(INPUT)


def demo_layer() -> nn.BatchNorm2d:
    """The ``BatchNorm2d(2)`` of the example, in ``train()``."""
    bn = nn.BatchNorm2d(2)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(WEIGHT))
        bn.bias.zero_()
    return bn.train()


def _rounds_to(t: Tensor, printed: Tensor) -> int:
    return int((torch.round(t.double() * 1e4) == torch.round(printed.double() * 1e4)).sum())


def demo_text() -> str:
    """The full walk-through as text (what ``bnkit explain --demo`` prints)."""
    x, bn = demo_input(), demo_layer()
    printed_x, printed_y = _shape(PRINTED_INPUT), _shape(PRINTED_OUTPUT)
    e = explain(bn, x, name="bn")
    naive = WEIGHT[0] * PRINTED_INPUT[0][0]
    first = float(e.output[0, 0, 0, 0])
    rounded = explain(bn, printed_x).output.detach()
    drift = float((rounded - printed_y).abs().max())
    match = _rounds_to(e.output, printed_y)
    with torch.no_grad():
        shown = torch.round(e.output * 1e4) / 1e4
    intro = (
        "Why is BatchNorm's output not weight·x + bias?\n\n"
        "A (1, 2, 3, 3) conv output goes through BatchNorm2d(2) in train(). The weight prints as\n"
        f"[0.8352, 0.2056] and the bias as [0, 0], so weight·x + bias would turn the first value\n"
        f"-0.0403 into {naive:.4f}. The layer returns {first:.4f}: in train() BatchNorm first\n"
        "normalizes each channel with the mean and variance of the batch, and only then\n"
        "scales by weight (γ) and shifts by bias (β). Every number of that computation:\n"
    )
    outro = (
        f"\nThe output, to 4 decimals:\n{shown}\n"
        f"matches the printed output of the example in {match} of {printed_y.numel()} values.\n\n"
        "The example printed 4 decimals. The input and weight used above are float32 values that\n"
        "print exactly as the example's; feeding the 4-decimal input itself instead moves the\n"
        f"output by up to {drift:.1e}, because channel 0's values lie within ±0.05 of each other.\n"
        "In eval() the layer would use its running statistics instead (mean 0 and variance 1\n"
        "for a fresh layer), and then the output would be close to weight·x + bias.\n"
    )
    return f"{intro}\n{e}\n{outro}"
