"""The machinery of one recalibration pass: hooks, early stop, restore, merge across ranks.

While a :class:`Pass` is open, every selected layer normalizes with its batch statistics (a
``_BatchNorm`` through its own forward under the estimator's policy; a frozen export through a
forward hook that replaces its output) and its buffers hold what the estimator reads after each
batch. Every buffer of the model is snapshotted on entry and put back on exit; on success the
selected layers then receive their new statistics.
"""

from __future__ import annotations

import contextlib
import dataclasses
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from bnkit.apply import using
from bnkit.errors import RecalibrationError
from bnkit.functional import values_per_channel
from bnkit.layers.select import unwrap
from bnkit.layers.state import ATTR, state_of
from bnkit.layers.sync import LOCAL
from bnkit.stats.estimators import Estimator

__all__ = ["Pass", "StopForward"]


class StopForward(BaseException):
    """Raised by the last selected layer reached in a forward, to skip the rest of the network.

    A ``BaseException`` (as ``KeyboardInterrupt``) so that ``except Exception`` in a user's
    forward does not swallow it.
    """


@dataclasses.dataclass
class _Layer:
    name: str
    module: nn.Module
    estimator: Estimator
    n: int = 0
    reached: bool = False

    def buffers(self) -> tuple[Tensor, Tensor]:
        mean, var = self.module.running_mean, self.module.running_var
        assert isinstance(mean, Tensor)  # checked on selection
        assert isinstance(var, Tensor)
        return mean, var

    def counter(self) -> Tensor | None:
        nbt = getattr(self.module, "num_batches_tracked", None)
        return nbt if isinstance(nbt, Tensor) else None

    def record(self) -> None:
        self.estimator.update(self.n, *self.buffers())


class Pass:
    """``with Pass(model, layers, Estimator) as run:`` feed batches, then ``run.finish(error)``."""

    def __init__(
        self, model: nn.Module, layers: list[tuple[str, nn.Module]], estimator: type[Estimator]
    ) -> None:
        self.model = model
        self.estimator = estimator
        self.layers = [
            _Layer(name, m, estimator(int(_buffer(m, "running_mean").numel()), _device(m)))
            for name, m in layers
        ]
        self._by_id = {id(layer.module): layer for layer in self.layers}
        self.stop_early = False
        self._reached = 0
        self._stack = contextlib.ExitStack()
        self._saved: list[tuple[nn.Module, str, Tensor, Tensor]] = []
        self.results: list[tuple[Tensor, Tensor, int]] | None = None

    # ------------------------------------------------------------------ enter / exit
    def __enter__(self) -> Pass:
        root = unwrap(self.model)
        with torch.no_grad():
            self._saved = [
                (module, name, buf, buf.clone())
                for module in root.modules()
                for name, buf in module._buffers.items()
                if buf is not None
            ]
        try:
            native = {id(layer.module) for layer in self.layers if _is_native(layer.module)}
            if native:
                self._stack.enter_context(
                    using(self.model, self.estimator.policy, where=lambda _, m: id(m) in native)
                )
                # Each rank keeps its own sums and finish() merges them once, so no layer may
                # exchange batch statistics during the pass (using() puts the old state back).
                for layer in self.layers:
                    state = state_of(layer.module)
                    if state is not None:
                        vars(layer.module)[ATTR] = dataclasses.replace(state, sync=LOCAL)
            for layer in self.layers:
                module = layer.module
                handles = [module.register_forward_pre_hook(self._before)]
                post = self._after if _is_native(module) else self._after_frozen
                handles.append(module.register_forward_hook(post))
                for handle in handles:
                    self._stack.callback(handle.remove)
            self._reset_layers()
        except BaseException:
            self._exit(ok=False)
            raise
        return self

    def _reset_layers(self) -> None:
        with torch.no_grad():
            for layer in self.layers:
                mean, var = layer.buffers()
                mean.zero_()
                var.fill_(1.0)
                counter = layer.counter()
                if counter is not None:
                    counter.zero_()

    def restart(self) -> None:
        """Forget every batch seen so far (fresh estimators and buffers)."""
        for layer in self.layers:
            layer.estimator = self.estimator(layer.estimator.channels, layer.estimator.device)
            layer.n, layer.reached = 0, False
        self._reset_layers()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(ok=exc_type is None)

    def _exit(self, ok: bool) -> None:
        try:
            self._stack.close()
        finally:
            with torch.no_grad():
                for module, name, original, copy in self._saved:
                    module._buffers[name] = original
                    original.copy_(copy)
                if ok and self.results is not None:
                    for layer, (mean, var, batches) in zip(self.layers, self.results, strict=True):
                        running_mean, running_var = layer.buffers()
                        running_mean.copy_(mean)
                        running_var.copy_(var)
                        counter = layer.counter()
                        if counter is not None:
                            counter.fill_(batches)

    # ------------------------------------------------------------------ per forward
    def begin_batch(self, stop_early: bool) -> None:
        """Start a forward; with ``stop_early``, the last selected layer reached stops it."""
        self.stop_early = stop_early
        self._reached = 0
        for layer in self.layers:
            layer.reached = False

    def _before(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        layer = self._by_id[id(module)]
        if layer.reached:
            raise RecalibrationError(
                f"layer {layer.name!r} was reached twice in one forward; its running statistics "
                "would mix the inputs of every place it is called from, while in eval() all of "
                "them are normalized with the same mean and variance. Give each call its own "
                "BatchNorm layer, or leave this one out with where="
            )
        x = args[0]
        n = values_per_channel(x)
        if n <= 1:
            raise RecalibrationError(
                f"layer {layer.name!r} got input shape {tuple(x.shape)}: 1 value per channel, "
                "and batch statistics need more than 1; use larger batches (with num_samples, "
                "the last batch is cut to the samples still needed)"
            )
        layer.reached, layer.n = True, n
        self._reached += 1
        if self.stop_early and self._reached == len(self.layers):
            # Nothing after this layer is needed: update its buffers as its forward would.
            mean, var = layer.buffers()
            counter = layer.counter()
            if counter is not None and _is_native(module):
                counter.add_(1)
            torch.batch_norm_update_stats(x, mean, var, layer.estimator.next_factor())
            layer.record()
            raise StopForward

    def _after(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._by_id[id(module)].record()

    def _after_frozen(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Tensor:
        layer = self._by_id[id(module)]
        mean, var = layer.buffers()
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        eps = float(getattr(module, "eps", 1e-5))
        out = F.batch_norm(
            args[0], mean, var, weight, bias, True, layer.estimator.next_factor(), eps
        )
        layer.record()
        return out

    # ------------------------------------------------------------------ the end
    def finish(self, error: BaseException | None) -> None:
        """Merge the estimators of every rank (all ranks call it, also after an error).

        Raises ``error`` itself, or a :class:`RecalibrationError` when another rank failed, a
        layer was never reached, or a result is not finite.
        """
        if error is None:
            error = self._check_counters()
        sizes = [self.estimator.size(layer.estimator.channels) for layer in self.layers]
        device = self.layers[0].estimator.device
        if error is None:
            parts = [torch.zeros(1, dtype=torch.float64, device=device)]
            parts += [layer.estimator.local().to(device) for layer in self.layers]
            local = torch.cat(parts)
        else:
            local = torch.zeros(1 + sum(sizes), dtype=torch.float64, device=device)
            local[0] = 1.0
        rows = _gather(local)
        if error is not None:
            raise error
        failed = [rank for rank, flag in enumerate(rows[:, 0].tolist()) if flag]
        if failed:
            raise RecalibrationError(
                f"recalibration failed on rank(s) {failed}, so no rank changed its statistics; "
                "see the error raised there"
            )
        results, start = [], 1
        for size in sizes:
            results.append(self.estimator.combine(rows[:, start : start + size]))
            start += size
        self._check_results(results)
        self.results = results

    def _check_counters(self) -> RecalibrationError | None:
        for layer in self.layers:
            counter = layer.counter()
            if counter is None or not _is_native(layer.module):
                continue
            skipped = layer.estimator.batches - int(counter.item())
            if skipped:
                return RecalibrationError(
                    f"layer {layer.name!r} got NaN/Inf batch statistics from {skipped} of "
                    f"{layer.estimator.batches} batches; the data or the layers before it "
                    "produce non-finite values"
                )
        return None

    def _check_results(self, results: list[tuple[Tensor, Tensor, int]]) -> None:
        missing = [layer.name for layer, r in zip(self.layers, results, strict=True) if not r[2]]
        if missing:
            names = ", ".join(repr(n) for n in missing)
            raise RecalibrationError(
                f"selected layer(s) {names} were never reached by the forward; the model does "
                "not run them on this data. Pass forward=lambda model, batch: ... that runs "
                "them, or leave them out with where="
            )
        for layer, (mean, var, _) in zip(self.layers, results, strict=True):
            if not bool(torch.isfinite(mean).all() & torch.isfinite(var).all()):
                raise RecalibrationError(
                    f"layer {layer.name!r} got NaN/Inf statistics; the data or the layers "
                    "before it produce non-finite values"
                )


def _is_native(module: nn.Module) -> bool:
    return isinstance(module, _BatchNorm)


def _buffer(module: nn.Module, name: str) -> Tensor:
    buf = getattr(module, name)
    assert isinstance(buf, Tensor)
    return buf


def _device(module: nn.Module) -> torch.device:
    return _buffer(module, "running_mean").device


def _gather(local: Tensor) -> Tensor:
    """One row per rank (just ``local`` without a process group of several ranks)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local[None]
    rows = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, local)
    return torch.stack(rows)
