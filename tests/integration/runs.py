"""Training trajectories of real models, and their native twins for each expressible preset.

A trajectory is two train steps (forward, backward, gradient step) and one eval forward, with every
output, gradient and buffer recorded. The same trajectory of the untouched model, set up the way
plain PyTorch expresses a preset, must match bnkit's bit for bit.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch
import torch.nn as nn
from tests.integration.zoo import Zoo, bn_modules, built, output
from torch import Tensor

__all__ = ["NATIVE", "Trajectory", "assert_same", "native_run", "native_twin", "trajectory"]

Phase = Callable[[nn.Module, bool], None]


def _nothing(model: nn.Module, training: bool) -> None:
    pass


def _running(model: nn.Module, training: bool) -> None:
    """Every BatchNorm layer in eval(): running statistics, no update."""
    for _, m in bn_modules(model):
        m.eval()


def _batch(model: nn.Module, training: bool) -> None:
    """Every BatchNorm layer in train() without tracking: batch statistics, no update."""
    for _, m in bn_modules(model):
        m.train()
        m.track_running_stats = False


@dataclasses.dataclass(frozen=True)
class Native:
    """How plain PyTorch expresses a preset: BN gamma/beta trainable or not, and the phase."""

    affine_trainable: bool
    phase: Phase


NATIVE: dict[str, Native] = {
    "pytorch": Native(True, _nothing),
    "frozen_affine": Native(False, _nothing),
    "frozen": Native(False, _running),
    "frozen_stats": Native(True, _running),
    "batch_stats": Native(True, _batch),
}
"""The presets plain PyTorch can express, and how."""


def native_twin(model: nn.Module, preset: str) -> tuple[nn.Module, Phase]:
    """An untouched copy of ``model`` set up as plain PyTorch expresses ``preset``."""
    twin = copy.deepcopy(model)
    spec = NATIVE[preset]
    for _, m in bn_modules(twin):
        for p in (m.weight, m.bias):
            if p is not None:
                p.requires_grad_(spec.affine_trainable)
    return twin, spec.phase


@dataclasses.dataclass
class Trajectory:
    outputs: list[Tensor] = dataclasses.field(default_factory=list)
    grads: list[dict[str, Tensor | None]] = dataclasses.field(default_factory=list)
    buffers: list[dict[str, Tensor]] = dataclasses.field(default_factory=list)


def _forward(model: nn.Module, zoo: Zoo, step: int) -> Tensor:
    torch.manual_seed(100 + step)  # dropout and drop-path draw the same masks in both runs
    return output(model, zoo, seed=10 + step)


@torch.no_grad()
def _step(model: nn.Module) -> None:
    """A gradient step whose largest change is 1e-3, however large the gradients (a batch of
    two through BatchNorm at 1x1 resolution makes some enormous)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return
    top = max(float(p.grad.abs().max()) for p in params if p.grad is not None)
    for p in params:
        assert p.grad is not None
        if top > 0:
            p.add_(p.grad, alpha=-1e-3 / top)
        p.grad = None


def trajectory(model: nn.Module, zoo: Zoo, phase: Phase = _nothing, steps: int = 2) -> Trajectory:
    """Train ``steps`` gradient steps, then one eval forward; record everything."""
    run = Trajectory()
    with torch.random.fork_rng():
        for step in range(steps):
            model.train()
            phase(model, True)
            out = _forward(model, zoo, step)
            torch.tanh(out.float()).mean().backward()  # bounded: no run diverges
            run.outputs.append(out.detach().clone())
            run.grads.append(
                {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
            )
            run.buffers.append({n: b.clone() for n, b in model.named_buffers()})
            _step(model)
        model.eval()
        phase(model, False)
        with torch.no_grad():
            run.outputs.append(_forward(model, zoo, steps).clone())
        run.buffers.append({n: b.clone() for n, b in model.named_buffers()})
    return run


def _equal(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def assert_same(ours: Trajectory, theirs: Trajectory) -> None:
    """Bit-for-bit equal outputs, gradients (and which exist) and buffers, step by step."""
    for i, (a, b) in enumerate(zip(ours.outputs, theirs.outputs, strict=True)):
        assert _equal(a, b), f"output of step {i} differs (max |Δ| {(a - b).abs().max():.3g})"
    for i, (ga, gb) in enumerate(zip(ours.grads, theirs.grads, strict=True)):
        assert ga.keys() == gb.keys()
        bad = [n for n in ga if not _equal(ga[n], gb[n])]
        assert not bad, f"gradients of step {i} differ: {bad[:5]} ({len(bad)} in all)"
    for i, (ba, bb) in enumerate(zip(ours.buffers, theirs.buffers, strict=True)):
        assert ba.keys() == bb.keys()
        bad = [n for n in ba if not _equal(ba[n], bb[n])]
        assert not bad, f"buffers after step {i} differ: {bad[:5]} ({len(bad)} in all)"


_RUNS: dict[tuple[str, str], Trajectory] = {}


def native_run(zoo: Zoo, preset: str) -> Trajectory:
    """The trajectory of the untouched model set up as PyTorch expresses ``preset`` (cached)."""
    key = (zoo.name, preset)
    if key not in _RUNS:
        twin, phase = native_twin(built(zoo), preset)
        _RUNS[key] = trajectory(twin, zoo, phase)
    return _RUNS[key]
