"""Recalibration: recompute BatchNorm running statistics from data (precise BN, AdaBN).

After fine-tuning, weight averaging or a move to a new domain, running statistics no longer
describe the activations the layers see. :func:`recalibrate` runs the data through the model
once and replaces them with statistics computed by an estimator (:mod:`bnkit._estimators`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from bnkit.apply import policy_of
from bnkit.errors import LayerError, RecalibrationError
from bnkit.layers.select import Where, lazy_reason, select, unwrap
from bnkit.stats.estimators import ESTIMATORS, Estimator
from bnkit.stats.layout import ChannelsLast, wants_channels_last
from bnkit.stats.progress import Progress
from bnkit.stats.recal_pass import Pass, StopForward

__all__ = ["recalibrate"]

M = TypeVar("M", bound=nn.Module)
Forward = Callable[[nn.Module, Any], Any]


def recalibrate(
    model: M,
    data: Iterable[Any],
    *,
    num_samples: int | None = None,
    num_batches: int | None = None,
    estimator: str = "population",
    forward: Forward | None = None,
    where: Where = None,
    progress: bool | str = True,
) -> M:
    """Recompute the running statistics of the selected BatchNorm layers from ``data``.

    During the pass each selected layer normalizes with the statistics of its batch (as in
    training), so deeper layers see the activations a training-mode forward gives them; the
    estimator turns the statistics of each layer's *input* into ``running_mean`` and
    ``running_var``. Nothing else changes: other modules keep their ``training`` flags (dropout
    stays off), parameters are untouched, every other buffer is put back, managed layers keep
    their policies, and no autograd graph is built. On any exception the model is restored
    exactly. ``num_batches_tracked`` of each selected layer becomes the number of batches it
    saw (over all ranks), as ``torch.optim.swa_utils.update_bn`` counts them.

    Once every selected layer has been reached in a forward (from the second batch on), the
    rest of the forward is skipped: the last layer's hook raises an exception that
    ``recalibrate`` catches (a ``BaseException``, so ``except Exception`` in the model or in
    ``forward=`` does not swallow it; ``finally`` blocks run). Code after the model call in
    ``forward=`` therefore runs for the first batch only.

    Args:
        model: the model; DDP and ``torch.compile`` wrappers are seen through (the default
            forward calls the module inside them).
        data: a DataLoader or any iterable of tensors, tuples/lists (the first item is fed)
            or dicts (fed as keyword arguments). Tensors are moved to the model's device.
        num_samples: stop after this many samples (the last batch is cut to fit); the data
            running out first is an error.
        num_batches: stop after this many batches (the data running out first is an error).
            Without either limit, one full pass over ``data``.
        estimator: ``"population"`` (exact statistics of all the data, sample-weighted),
            ``"batch_mean"`` (mean of per-batch statistics) or ``"cumulative"`` (bit for bit
            ``torch.optim.swa_utils.update_bn``); the formulas are in ``bnkit._estimators``.
        forward: ``forward(model, batch)`` for models that need more than ``model(batch)``.
        where: the layers to recalibrate; by default every layer with running statistics
            whose policy updates them (layers that never update, such as ``frozen`` ones or
            frozen exports, are left alone unless selected here explicitly).
        progress: a progress bar on stderr: True (tqdm or rich, shown once a run takes a
            couple of seconds), False, ``"tqdm"`` or ``"rich"``.

    Returns:
        The same model, with new statistics in the selected layers.

    Raises:
        RecalibrationError: bad arguments, empty data, data exhausted before the limit, a
            selected layer never reached or reached twice in one forward, NaN/Inf
            statistics, or a failure on another rank.
        SelectionError: ``where`` matches no BatchNorm layer.

    With ``torch.distributed`` initialized, every rank must call it; the ranks merge their
    statistics (sample-weighted for ``population``) and all end with the same numbers, those
    of one process that saw all the data.
    """
    estimator_cls = _estimator(estimator)
    _check_limits(num_samples, num_batches)
    layers = _targets(model, where)
    device = _model_device(model)
    total, unit = _total(data, num_samples, num_batches)
    bar = Progress(progress, total, unit, "recalibrating BatchNorm")
    root = unwrap(model)
    fast = estimator != "cumulative" and wants_channels_last(root, device)
    layout = ChannelsLast(root) if fast else None
    with Pass(model, layers, estimator_cls) as run:
        error: BaseException | None = None
        try:
            with bar, layout or contextlib.nullcontext():
                _feed(run, model, data, forward, device, num_samples, num_batches, bar, layout)
        except Exception as err:
            error = err
        run.finish(error)
    return model


# --------------------------------------------------------------------------- the loop
def _feed(
    run: Pass,
    model: nn.Module,
    data: Iterable[Any],
    forward: Forward | None,
    device: torch.device | None,
    num_samples: int | None,
    num_batches: int | None,
    bar: Progress,
    layout: ChannelsLast | None,
) -> None:
    call: Forward = forward if forward is not None else _default_forward
    target = model if forward is not None else unwrap(model)
    batches = samples = 0
    iterator = iter(data)
    with torch.no_grad():
        while num_batches is None or batches < num_batches:
            if num_samples is not None and samples >= num_samples:
                break
            try:
                batch = next(iterator)
            except StopIteration:
                break
            size = _batch_size(batch)
            if num_samples is not None:
                if size is None:
                    raise RecalibrationError(
                        "num_samples needs batches holding a tensor whose first dimension is "
                        f"the batch size (got a {type(batch).__name__}); use num_batches"
                    )
                if samples + size > num_samples:
                    batch, size = _take(batch, size, num_samples - samples), num_samples - samples
            run.begin_batch(stop_early=batches > 0)
            batch = _to_device(batch, device)
            if layout is not None and layout.active and batches == 0:
                try:
                    with contextlib.suppress(StopForward):
                        call(target, layout.batch(batch))
                except RuntimeError:  # the model needs its own layout: start over without
                    layout.undo()
                    run.restart()
                    run.begin_batch(stop_early=False)
                    with contextlib.suppress(StopForward):
                        call(target, batch)
            else:
                with contextlib.suppress(StopForward):
                    call(target, batch if layout is None else layout.batch(batch))
            batches += 1
            samples += size or 0
            bar.advance((size or 0) if num_samples is not None else 1)
    if batches == 0:
        raise RecalibrationError(
            f"data gave no batch (an empty {type(data).__name__}); recalibration needs data"
        )
    if num_batches is not None and batches < num_batches:
        raise RecalibrationError(
            f"data ran out after {batches} batches ({samples} samples), before num_batches="
            f"{num_batches}; ask for fewer batches or give more data"
        )
    if num_samples is not None and samples < num_samples:
        raise RecalibrationError(
            f"data ran out after {samples} samples ({batches} batches), before num_samples="
            f"{num_samples}; ask for fewer samples or give more data"
        )


def _default_forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)) and batch:
        return model(batch[0])
    if isinstance(batch, Mapping):
        return model(**batch)
    raise RecalibrationError(
        f"cannot feed a batch of type {type(batch).__name__} to the model; pass "
        "forward=lambda model, batch: model(...)"
    )


def _first_tensor(batch: Any) -> Tensor | None:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Mapping):
        items: Iterable[Any] = batch.values()
    elif isinstance(batch, (tuple, list)):
        items = batch
    else:
        return None
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def _batch_size(batch: Any) -> int | None:
    first = _first_tensor(batch)
    return None if first is None or first.dim() == 0 else int(first.shape[0])


def _take(batch: Any, size: int, keep: int) -> Any:
    """The first ``keep`` samples: every tensor whose first dimension is the batch size."""
    if isinstance(batch, Tensor):
        return batch[:keep] if batch.dim() > 0 and batch.shape[0] == size else batch
    if isinstance(batch, Mapping):
        return {k: _take(v, size, keep) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_take(v, size, keep) for v in batch)
    return batch


def _to_device(batch: Any, device: torch.device | None) -> Any:
    if device is None:
        return batch
    if isinstance(batch, Tensor):
        return batch if batch.device == device else batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


# --------------------------------------------------------------------------- arguments
def _estimator(name: str) -> type[Estimator]:
    try:
        return ESTIMATORS[name]
    except (KeyError, TypeError):
        known = ", ".join(repr(n) for n in ESTIMATORS)
        raise RecalibrationError(f"unknown estimator {name!r}; estimators: {known}") from None


def _check_limits(num_samples: int | None, num_batches: int | None) -> None:
    if num_samples is not None and num_batches is not None:
        raise RecalibrationError(
            f"pass num_samples or num_batches, not both (got num_samples={num_samples}, "
            f"num_batches={num_batches})"
        )
    for label, value in (("num_samples", num_samples), ("num_batches", num_batches)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise RecalibrationError(f"{label} must be an int (got {value!r})")
        if value is not None and value <= 0:
            raise RecalibrationError(f"{label} must be positive (got {value})")


def _total(
    data: Iterable[Any], num_samples: int | None, num_batches: int | None
) -> tuple[int | None, str]:
    if num_samples is not None:
        return num_samples, "samples"
    if num_batches is not None:
        return num_batches, "batches"
    try:
        return len(data), "batches"  # type: ignore[arg-type]
    except TypeError:
        return None, "batches"


def _has_stats(layer: nn.Module) -> bool:
    return all(isinstance(getattr(layer, k, None), Tensor) for k in ("running_mean", "running_var"))


def _never_updates(layer: nn.Module) -> bool:
    try:
        policy = policy_of(layer)
    except LayerError:  # flags no policy describes (e.g. only gamma frozen): a plain layer
        return False
    return not (policy.updates(True) or policy.updates(False))


def _targets(model: nn.Module, where: Where) -> list[tuple[str, nn.Module]]:
    layers = select(model, where)
    for name, layer in layers:
        lazy = lazy_reason(layer)
        if lazy is not None:
            raise LayerError(f"layer {name!r} {lazy}")
    if where is None:
        chosen = [(n, m) for n, m in layers if _has_stats(m) and not _never_updates(m)]
        if not chosen:
            names = ", ".join(repr(n) for n, _ in layers[:8])
            raise RecalibrationError(
                f"no BatchNorm layer to recalibrate: every one ({names}) either never updates "
                "its running statistics (its policy says so) or has none; select layers "
                "explicitly with where= to recalibrate them anyway"
            )
        return chosen
    for name, layer in layers:
        if not _has_stats(layer):
            raise RecalibrationError(
                f"layer {name!r} has no running statistics to recalibrate (built with "
                "track_running_stats=False); leave it out of where="
            )
        if not isinstance(layer, _BatchNorm) and not isinstance(getattr(layer, "eps", None), float):
            raise RecalibrationError(
                f"layer {name!r} is a {type(layer).__name__}, which bnkit cannot normalize with "
                "batch statistics (it has no eps); leave it out of where="
            )
    return layers


def _model_device(model: nn.Module) -> torch.device | None:
    root = unwrap(model)
    for tensor in (*root.parameters(), *root.buffers()):
        return tensor.device
    return None
