"""Measuring a watch step: snapshots of each layer and what changed between two of them.

All the numbers of one record are computed on the layers' device and read back to the host
together, so a record costs one synchronization however many layers are watched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
from torch import Tensor

from bnkit.diagnostics._facts import running_stats
from bnkit.diagnostics._rules_input import jeffreys

__all__ = ["Change", "Snap", "measure", "snap"]


@dataclasses.dataclass(frozen=True)
class Snap:
    """Copies of a layer's running statistics, counter and gamma/beta."""

    mean: Tensor | None
    var: Tensor | None
    count: Tensor | None
    affine: list[Tensor]


class Change(NamedTuple):
    """What changed in one layer between two snapshots (see :class:`bnkit.LayerStep`)."""

    mean: float | None
    var: float | None
    rel: float | None
    drift: float | None
    affine: float
    batches: int


def snap(layer: nn.Module) -> Snap:
    """Copy what a watch compares."""
    mean, var = running_stats(layer)
    count = getattr(layer, "num_batches_tracked", None)
    params = (getattr(layer, "weight", None), getattr(layer, "bias", None))
    return Snap(
        mean=None if mean is None else mean.detach().clone(),
        var=None if var is None else var.detach().clone(),
        count=count.detach().clone() if isinstance(count, Tensor) else None,
        affine=[p.detach().clone() for p in params if isinstance(p, Tensor)],
    )


def _diff(a: Tensor, b: Tensor) -> Tensor:
    """``|a - b|`` with equal values (NaN included) as 0 and NaN-vs-number as inf."""
    a, b = a.double(), b.double()
    same = (a == b) | (a.isnan() & b.isnan())
    gap = (a - b).abs().nan_to_num(nan=float("inf"))
    return torch.where(same, torch.zeros_like(gap), gap)


def _max(t: Tensor) -> Tensor:
    return t.max() if t.numel() else t.new_zeros(())


def _scalars(now: Snap, before: Snap, start: Snap, eps: float) -> list[Tensor | None]:
    """[mean, var, rel, drift, affine, batches] as 0-dim tensors (None where undefined)."""
    affine = [_max(_diff(a, b)) for a, b in zip(now.affine, before.affine, strict=True)]
    aff = torch.stack(affine).max() if affine else None
    batches = None
    if now.count is not None and before.count is not None:
        batches = (now.count - before.count).double()
    if now.mean is None or now.var is None or before.mean is None or before.var is None:
        return [None, None, None, None, aff, batches]
    dm, dv = _diff(now.mean, before.mean), _diff(now.var, before.var)
    base = torch.cat([before.mean, before.var]).double().norm()
    rel = torch.cat([dm, dv]).norm() / base.clamp_min(1e-12)
    drift = None
    if start.mean is not None and start.var is not None and now.mean.numel():
        drift = jeffreys(
            start.mean.double(),
            start.var.double().clamp_min(0),
            now.mean.double(),
            now.var.double().clamp_min(0),
            eps,
        ).mean()
    return [_max(dm), _max(dv), rel, drift, aff, batches]


def _to_host(values: list[Tensor]) -> list[float]:
    """The values as floats, with one transfer per device."""
    by_device: dict[torch.device, list[int]] = {}
    for i, v in enumerate(values):
        by_device.setdefault(v.device, []).append(i)
    out = [0.0] * len(values)
    for indices in by_device.values():
        host = torch.stack([values[i] for i in indices]).tolist()
        for i, value in zip(indices, host, strict=True):
            out[i] = value
    return out


def measure(
    layers: Sequence[tuple[str, nn.Module]], prev: dict[str, Snap], start: dict[str, Snap]
) -> tuple[dict[str, Snap], dict[str, Change]]:
    """Snapshots now, and each layer's change since ``prev`` (drift since ``start``)."""
    snaps = {name: snap(layer) for name, layer in layers}
    values: list[Tensor] = []
    present: list[list[bool]] = []
    for name, layer in layers:
        eps = float(getattr(layer, "eps", 1e-5))
        row = _scalars(snaps[name], prev[name], start[name], eps)
        present.append([v is not None for v in row])
        values.extend(v.reshape(()).double() for v in row if v is not None)
    flat = iter(_to_host(values))
    changes = {}
    for (name, _), mask in zip(layers, present, strict=True):
        mean, var, rel, drift, aff, batches = (next(flat) if p else None for p in mask)
        changes[name] = Change(mean, var, rel, drift, aff or 0.0, int(batches or 0))
    return snaps, changes
