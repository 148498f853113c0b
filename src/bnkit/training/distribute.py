r"""Running statistics made equal on every rank, without a data pass.

Under DDP each rank updates its BatchNorm running statistics from its own batches, so the ranks
end an epoch with different statistics (DDP broadcasts buffers from rank 0 at each forward only
with ``broadcast_buffers=True``). Before evaluating or saving, :func:`distribute_stats` makes
them equal with one exchange, as timm's ``distribute_bn`` does:

* ``"mean"``: every rank takes the mean over the :math:`R` ranks of the running statistics,

  .. math::

      \bar\mu = \frac1R \sum_r \hat\mu_r, \qquad \bar\sigma^2 = \frac1R \sum_r \hat\sigma^2_r,

  i.e. the mean of the per-rank (unbiased, EMA-averaged) variances. That is not the variance
  of all ranks' data pooled, which adds the spread of the rank means,
  :math:`\frac1R\sum_r (\hat\mu_r - \bar\mu)^2`: each rank's running variance already
  estimates the variance of the one distribution all ranks sample, and the spread of their
  running means is sampling noise, not data; :func:`bnkit.recalibrate` (with
  ``torch.distributed`` initialized) gives the exact statistics of all ranks' data instead.
  ``num_batches_tracked`` becomes the largest over the ranks (ranks step together; a counter
  is not averaged);
* ``"broadcast"``: every rank takes rank ``src``'s statistics and counter.

Every rank must call it. A first exchange checks that every rank has the same layers and
finite statistics, so a rank that cannot take part fails all ranks at once; a rank that never
calls leaves the others waiting until ``timeout``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

from bnkit.errors import DistributedError, PolicyError
from bnkit.layers.select import Where, bn_layers, select, unwrap
from bnkit.layers.sync import wait_collective

__all__ = ["distribute_stats"]

M = TypeVar("M", bound=nn.Module)
MODES = ("mean", "broadcast")


def distribute_stats(
    model: M,
    mode: str = "mean",
    group: Any = None,
    src: int = 0,
    *,
    where: Where = None,
    timeout: float | None = None,
) -> M:
    """Make the running statistics of the selected BatchNorm layers equal on every rank.

    Without an initialized process group (or with one rank) nothing changes.

    Args:
        model: the model (DDP and compiled wrappers are seen through).
        mode: ``"mean"`` (the mean over ranks of ``running_mean`` and ``running_var``; the
            largest ``num_batches_tracked``) or ``"broadcast"`` (rank ``src``'s).
        group: a process group; the default group if None.
        src: with ``"broadcast"``, the global rank whose statistics every rank takes.
        where: which layers; every layer with running statistics if None.
        timeout: seconds a rank waits for the others at one exchange (None: the group's).

    Returns:
        The same model.

    Raises:
        PolicyError: an unknown mode, a bad ``src`` or ``timeout``.
        DistributedError: a rank holds NaN/Inf statistics (in ``"mean"``; on ``src`` in
            ``"broadcast"``) or other layers than the others (then every rank raises and
            nothing changes), or an exchange failed or waited past ``timeout`` (another rank
            failed or did not call).
        SelectionError: ``where`` matches no BatchNorm layer.
    """
    if mode not in MODES:
        raise PolicyError(f"mode must be 'mean' or 'broadcast' (got {mode!r})")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
    ):
        raise PolicyError(f"timeout must be a positive number of seconds (got {timeout!r})")
    layers = [(n, m) for n, m in _chosen(model, where) if _stats(m) is not None]
    if not dist.is_available() or not dist.is_initialized():
        return model
    world = dist.get_world_size(group)
    if world <= 1:
        return model
    if mode == "broadcast" and (
        isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < dist.get_world_size()
    ):
        raise PolicyError(f"src must be a rank of the job, 0 to {dist.get_world_size() - 1}")
    ex = _Exchange(group, timeout, world)
    ex.agree(layers, mode, src)
    if mode == "mean":
        _mean(layers, ex)
    else:
        _broadcast(layers, ex, src)
    return model


def _chosen(model: nn.Module, where: Where) -> list[tuple[str, nn.Module]]:
    root = unwrap(model)
    return select(root, where) if where is not None else list(bn_layers(root))


def _stats(layer: nn.Module) -> tuple[Tensor, Tensor] | None:
    mean, var = getattr(layer, "running_mean", None), getattr(layer, "running_var", None)
    return (mean, var) if isinstance(mean, Tensor) and isinstance(var, Tensor) else None


def _counter(layer: nn.Module) -> Tensor | None:
    count = getattr(layer, "num_batches_tracked", None)
    return count if isinstance(count, Tensor) else None


def _device(layers: list[tuple[str, nn.Module]], group: Any) -> torch.device:
    """Where exchanged tensors live: the statistics' device (CUDA for NCCL), else CPU."""
    for _, layer in layers:
        stats = _stats(layer)
        assert stats is not None
        return stats[0].device
    backend = dist.get_backend(group)
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _Exchange:
    """Collectives over the group, each waiting at most ``timeout`` seconds."""

    def __init__(self, group: Any, timeout: float | None, world: int) -> None:
        self.group, self.timeout, self.world = group, timeout, world

    def _run(self, start: Callable[[], Any], what: str) -> None:
        """Start a collective and wait for it; any failure is one clear error."""
        try:
            wait_collective(start(), self.timeout)
        except RuntimeError as err:  # gloo/NCCL errors, timeouts included
            limit = f"{self.timeout:g} s" if self.timeout is not None else "the group's timeout"
            raise DistributedError(
                f"distribute_stats: the exchange of {what} with the other {self.world - 1} "
                f"rank(s) failed or waited past {limit}; another rank failed or did not call "
                f"distribute_stats (every rank must call it, with the same model): {err}"
            ) from err

    def all_reduce(self, t: Tensor, op: Any, what: str) -> None:
        self._run(lambda: dist.all_reduce(t, op=op, group=self.group, async_op=True), what)

    def broadcast(self, t: Tensor, src: int, what: str) -> None:
        self._run(lambda: dist.broadcast(t, src=src, group=self.group, async_op=True), what)

    def agree(self, layers: list[tuple[str, nn.Module]], mode: str, src: int) -> None:
        """Every rank learns whether every rank can take part; all raise together if not."""
        rank = dist.get_rank(self.group)
        me = dist.get_rank()
        sizes = [int(s[0].numel()) for s in (_stats(m) for _, m in layers) if s is not None]
        problem = ""
        if not layers:
            problem = "no BatchNorm layer with running statistics"
        elif mode == "mean" or me == src:
            problem = _nonfinite(layers)
        device = _device(layers, self.group)
        header = torch.zeros(self.world + 4, dtype=torch.float64, device=device)
        header[rank] = 1.0 if problem else 0.0
        header[self.world :] = torch.tensor(
            [len(layers), -len(layers), sum(sizes), -sum(sizes)], dtype=torch.float64
        )
        self.all_reduce(header, dist.ReduceOp.MAX, "the layer counts")
        bad = [r for r in range(self.world) if header[r] > 0]
        n_max, n_min = int(header[self.world]), -int(header[self.world + 1])
        v_max, v_min = int(header[self.world + 2]), -int(header[self.world + 3])
        if bad:
            mine = f" (here: {problem})" if problem else ""
            raise DistributedError(
                f"distribute_stats: rank(s) {bad} of the group cannot take part{mine}; nothing "
                "was changed on any rank (fix the statistics there, e.g. bnkit.recalibrate, or "
                "broadcast from a healthy rank)"
            )
        if n_max != n_min or v_max != v_min:
            raise DistributedError(
                f"distribute_stats: the ranks hold different BatchNorm layers ({n_min} to "
                f"{n_max} layers, {v_min} to {v_max} channels in all); every rank must call it "
                "with the same model and where=; nothing was changed"
            )


def _nonfinite(layers: list[tuple[str, nn.Module]]) -> str:
    """The first layer with NaN/Inf statistics, as text ("" when all are finite)."""
    if bool(torch.isfinite(_flat(layers)).all()):
        return ""
    for name, layer in layers:
        stats = _stats(layer)
        assert stats is not None
        if not all(bool(torch.isfinite(t).all()) for t in stats):
            return f"NaN/Inf running statistics in layer {name!r}"
    return ""


def _flat(layers: list[tuple[str, nn.Module]]) -> Tensor:
    parts = []
    for _, layer in layers:
        stats = _stats(layer)
        assert stats is not None
        parts += [stats[0].detach().double().flatten(), stats[1].detach().double().flatten()]
    return torch.cat(parts)


def _counters(layers: list[tuple[str, nn.Module]], device: torch.device) -> Tensor:
    values = [_counter(m) for _, m in layers]
    return torch.tensor(
        [-1 if c is None else int(c) for c in values], dtype=torch.float64, device=device
    )


def _write(layers: list[tuple[str, nn.Module]], flat: Tensor, counters: Tensor) -> None:
    at = 0
    with torch.no_grad():
        for (_, layer), count in zip(layers, counters.tolist(), strict=True):
            stats = _stats(layer)
            assert stats is not None
            for t in stats:
                t.copy_(flat[at : at + t.numel()].view_as(t))
                at += t.numel()
            mine = _counter(layer)
            if mine is not None and count >= 0:
                mine.fill_(int(count))


def _mean(layers: list[tuple[str, nn.Module]], ex: _Exchange) -> None:
    flat = _flat(layers)
    counters = _counters(layers, flat.device)
    ex.all_reduce(flat, dist.ReduceOp.SUM, "running statistics")
    ex.all_reduce(counters, dist.ReduceOp.MAX, "num_batches_tracked")
    _write(layers, flat / ex.world, counters)


def _broadcast(layers: list[tuple[str, nn.Module]], ex: _Exchange, src: int) -> None:
    flat = _flat(layers)
    both = torch.cat([flat, _counters(layers, flat.device)])
    ex.broadcast(both, src, "running statistics")
    _write(layers, both[: flat.numel()], both[flat.numel() :])
