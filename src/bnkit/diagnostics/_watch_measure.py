"""Measuring a watch step: snapshots of the watched layers and what changed between two.

The statistics of all layers on one device are concatenated into flat float64 vectors, and
per-layer numbers come from segment reductions over them, so a record costs a fixed number of
tensor operations and one host synchronization per device, however many layers are watched.
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
from bnkit.errors import DiagnosticError

__all__ = ["Change", "Layout", "Snap"]


class Change(NamedTuple):
    """What changed in one layer between two snapshots (see ``bnkit.diagnostics.LayerStep``)."""

    mean: float | None
    var: float | None
    rel: float | None
    drift: float | None
    affine: float
    batches: int


@dataclasses.dataclass(frozen=True)
class Snap:
    """Copies of one device group's statistics, counters and gamma/beta (flat, float64)."""

    mean: Tensor
    var: Tensor
    count: Tensor
    affine: Tensor


def _affine(layer: nn.Module) -> list[Tensor]:
    params = (getattr(layer, "weight", None), getattr(layer, "bias", None))
    return [p for p in params if isinstance(p, Tensor)]


def _counter(layer: nn.Module) -> Tensor:
    count = getattr(layer, "num_batches_tracked", None)
    assert isinstance(count, Tensor)  # only layers with a counter are counted
    return count


def _device(layer: nn.Module) -> torch.device:
    for t in (*running_stats(layer), *_affine(layer)):
        if t is not None:
            return t.device
    return torch.device("cpu")


def _segments(sizes: list[int], device: torch.device) -> Tensor:
    index = torch.arange(len(sizes), device=device)
    # dtype: an empty list (no watched layer with running statistics) would make floats
    return torch.repeat_interleave(index, torch.tensor(sizes, dtype=torch.long, device=device))


class _Group:
    """The watched layers on one device."""

    def __init__(self, layers: list[tuple[int, nn.Module]], device: torch.device) -> None:
        self.device = device
        self.layers = layers
        self.stat = [(i, m) for i, m in layers if running_stats(m)[0] is not None]
        self.sizes = [int(running_stats(m)[0].numel()) for _, m in self.stat]  # type: ignore[union-attr]
        self.seg = _segments(self.sizes, device)
        eps = [float(getattr(m, "eps", 1e-5)) for _, m in self.stat]
        self.eps = torch.tensor(eps, dtype=torch.float64, device=device)[self.seg]
        self.counted = [
            (i, m) for i, m in layers if isinstance(getattr(m, "num_batches_tracked", None), Tensor)
        ]
        self.aff_sizes = [sum(t.numel() for t in _affine(m)) for _, m in layers]
        self.aff_seg = _segments(self.aff_sizes, device)

    def _cat(self, tensors: list[Tensor], stack: bool = False) -> Tensor:
        if not tensors:
            return torch.zeros(0, dtype=torch.float64, device=self.device)
        joined = torch.stack(tensors) if stack else torch.cat(tensors)
        return joined.to(torch.float64, copy=True)

    @torch.no_grad()
    def snap(self) -> Snap:
        means, variances = [], []
        for (_, m), size in zip(self.stat, self.sizes, strict=True):
            mean, var = running_stats(m)
            if mean is None or var is None or mean.numel() != size:
                raise DiagnosticError(
                    f"a watched layer ({type(m).__name__}) changed its running statistics' size "
                    "during the watch; start a new bnkit.watch()"
                )
            means.append(mean)
            variances.append(var)
        counts = [_counter(m) for _, m in self.counted]
        return Snap(
            mean=self._cat(means),
            var=self._cat(variances),
            count=self._cat(counts, stack=True),
            affine=self._cat([t for _, m in self.layers for t in _affine(m)]),
        )

    def _reduce(self, values: Tensor, seg: Tensor, n: int, how: str) -> Tensor:
        out = torch.zeros(n, dtype=torch.float64, device=self.device)
        if how == "amax":
            return out.scatter_reduce(0, seg, values, "amax", include_self=True)
        return out.index_add(0, seg, values)

    def changes(self, now: Snap, before: Snap, start: Snap) -> list[Tensor]:
        """Flat per-layer results: mean, var, rel, drift (stat layers), batches, affine."""
        k = len(self.stat)
        dm, dv = _diff(now.mean, before.mean), _diff(now.var, before.var)
        sq = self._reduce(dm.square() + dv.square(), self.seg, k, "sum")
        base = self._reduce(before.mean.square() + before.var.square(), self.seg, k, "sum")
        rel = sq.sqrt() / base.sqrt().clamp_min(1e-12)
        j = jeffreys(start.mean, start.var.clamp_min(0), now.mean, now.var.clamp_min(0), self.eps)
        sizes = torch.tensor(self.sizes, dtype=torch.float64, device=self.device)
        drift = self._reduce(j, self.seg, k, "sum") / sizes.clamp_min(1)
        return [
            self._reduce(dm, self.seg, k, "amax"),
            self._reduce(dv, self.seg, k, "amax"),
            rel,
            drift,
            now.count - before.count,
            self._reduce(_diff(now.affine, before.affine), self.aff_seg, len(self.layers), "amax"),
        ]


def _diff(a: Tensor, b: Tensor) -> Tensor:
    """``|a - b|`` with equal values (NaN included) as 0 and NaN-vs-number as inf."""
    same = (a == b) | (a.isnan() & b.isnan())
    gap = (a - b).abs().nan_to_num(nan=float("inf"))
    return torch.where(same, torch.zeros_like(gap), gap)


class Layout:
    """The watched layers, grouped by device, with the segment indices of their statistics."""

    def __init__(self, layers: Sequence[tuple[str, nn.Module]]) -> None:
        self.names = [n for n, _ in layers]
        by_device: dict[torch.device, list[tuple[int, nn.Module]]] = {}
        for i, (_, m) in enumerate(layers):
            by_device.setdefault(_device(m), []).append((i, m))
        self.groups = [_Group(members, device) for device, members in by_device.items()]

    def snap(self) -> list[Snap]:
        """Copies of everything a watch compares."""
        return [g.snap() for g in self.groups]

    def measure(self, now: list[Snap], before: list[Snap], start: list[Snap]) -> dict[str, Change]:
        """Each layer's change from ``before`` to ``now`` (drift from ``start``)."""
        found: dict[int, Change] = {}
        for g, a, b, s in zip(self.groups, now, before, start, strict=True):
            parts = g.changes(a, b, s)
            flat = torch.cat(parts).tolist()  # one synchronization per device
            k, c, n = len(g.stat), len(g.counted), len(g.layers)
            mean, var, rel, drift = (flat[i * k : (i + 1) * k] for i in range(4))
            batches, affine = flat[4 * k : 4 * k + c], flat[4 * k + c : 4 * k + c + n]
            stat = {i: j for j, (i, _) in enumerate(g.stat)}
            counted = {i: j for j, (i, _) in enumerate(g.counted)}
            for pos, (i, _) in enumerate(g.layers):
                j = stat.get(i)
                found[i] = Change(
                    mean=None if j is None else mean[j],
                    var=None if j is None else var[j],
                    rel=None if j is None else rel[j],
                    drift=None if j is None or g.sizes[j] == 0 else drift[j],
                    affine=affine[pos],
                    batches=int(batches[counted[i]]) if i in counted else 0,
                )
        return {self.names[i]: found[i] for i in sorted(found)}
