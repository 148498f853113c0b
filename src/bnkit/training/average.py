r"""Weight averaging (SWA, EMA) with BatchNorm statistics that belong to the averaged weights.

An averaged model (``torch.optim.swa_utils.AveragedModel``, timm's ``ModelEmaV2``/``V3``, or
a second copy whose parameters you average yourself) needs running statistics too. There are
two right answers, and the user chooses:

* **average them with the weights**, by the same rule: :func:`average_stats` around each
  averaging step. With weight :math:`w` for the new model (:math:`1/k` for the :math:`k`-th
  model of an equal-weight SWA average, :math:`1 - \text{decay}` for an EMA),

  .. math::

      \hat\mu \leftarrow \hat\mu + w\,(\mu_{\text{model}} - \hat\mu), \qquad
      \hat\sigma^2 \leftarrow \hat\sigma^2 + w\,(\sigma^2_{\text{model}} - \hat\sigma^2),

  computed in float64: the average of the snapshots' running statistics, weighted like their
  weights. Cheap and needs no data, but it is an average of statistics of *other* weights;
* **recalibrate** on training data after averaging: :func:`bnkit.recalibrate` computes the
  exact population statistics of the averaged weights (what ``swa_utils.update_bn``
  approximates with a per-batch cumulative average).

Whatever the helper does to the buffers inside the block (``AveragedModel(use_buffers=False)``
and timm's ``exclude_buffers=True`` copy the model's, ``use_buffers=True`` and timm's default
average them with the weights' rule, a hand-written EMA leaves them alone), the statistics after
the block are the rule above applied to the statistics before it, so the result does not depend
on the helper, and the only state is the averaged model's own buffers (saved with its
``state_dict``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from bnkit.errors import LayerError, PolicyError
from bnkit.layers.select import Where, bn_layers, select, unwrap

__all__ = ["average_stats"]


def _inner(averaged: nn.Module) -> nn.Module:
    """The module that holds the averaged weights inside an averaging helper."""
    if isinstance(averaged, AveragedModel) or _is_timm_ema(averaged):
        inner = averaged.module
        assert isinstance(inner, nn.Module)
        return unwrap(inner)
    return unwrap(averaged)


def _is_timm_ema(module: nn.Module) -> bool:
    cls = type(module)
    return (
        cls.__module__.startswith("timm.")
        and cls.__name__.startswith("ModelEma")
        and isinstance(getattr(module, "module", None), nn.Module)
    )


def _weight(averaged: nn.Module, decay: float | None, count: int | None) -> float:
    """The weight of the new model's statistics, from the rule given or the helper's own."""
    if decay is not None and count is not None:
        raise PolicyError("give the averaging rule once: decay= (EMA) or count= (equal weights)")
    if decay is not None:
        if isinstance(decay, bool) or not (isinstance(decay, (int, float)) and 0 <= decay <= 1):
            raise PolicyError(f"decay must be a number in [0, 1] (got {decay!r})")
        if isinstance(averaged, AveragedModel) and int(averaged.n_averaged) == 0:
            return 1.0  # AveragedModel copies the first model, whatever its averaging function
        return 1.0 - float(decay)
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise PolicyError(
                f"count must be a positive integer: how many models the average holds after "
                f"this step (got {count!r})"
            )
        return 1.0 / count
    if isinstance(averaged, AveragedModel):
        if averaged.avg_fn is not None or averaged.multi_avg_fn is not None:
            raise LayerError(
                "this AveragedModel averages with its own function, whose rule bnkit cannot "
                "read; say it: decay=... for get_ema_multi_avg_fn(decay), count=... for equal "
                "weights"
            )
        return 1.0 / (int(averaged.n_averaged) + 1)  # SWA: the model about to be averaged
    if _is_timm_ema(averaged):
        found = getattr(averaged, "decay", None)
        if isinstance(found, (int, float)) and 0 <= found <= 1:
            return 1.0 - float(found)
    raise LayerError(
        f"average_stats needs the rule the weights of this {type(averaged).__name__} are "
        "averaged with: decay=... for an EMA, count=... (how many models the average holds "
        "after this step) for equal weights"
    )


def _stats(layer: nn.Module) -> tuple[Tensor, Tensor] | None:
    mean, var = getattr(layer, "running_mean", None), getattr(layer, "running_var", None)
    if isinstance(mean, Tensor) and isinstance(var, Tensor):
        return mean, var
    return None


def _pairs(
    averaged: nn.Module, model: nn.Module, where: Where
) -> list[tuple[str, nn.Module, nn.Module]]:
    """``(name, averaged layer, model layer)`` for every selected layer with statistics."""
    theirs = dict(bn_layers(model))
    chosen = select(averaged, where) if where is not None else bn_layers(averaged)
    pairs = []
    for name, mine in chosen:
        stats = _stats(mine)
        if stats is None:
            continue
        other = theirs.get(name)
        other_stats = None if other is None else _stats(other)
        if other is None or other_stats is None:
            raise LayerError(
                f"layer {name!r} of the averaged model has running statistics, but the model "
                "has no BatchNorm layer with statistics of that name; average a copy of the "
                "same architecture"
            )
        if other_stats[0].shape != stats[0].shape:
            raise LayerError(
                f"layer {name!r}: the averaged model has {stats[0].numel()} channels, the model "
                f"{other_stats[0].numel()}; average a copy of the same architecture"
            )
        pairs.append((name, mine, other))
    if not pairs:
        raise LayerError("the averaged model has no BatchNorm layer with running statistics")
    return pairs


@contextlib.contextmanager
def average_stats(
    averaged: nn.Module,
    model: nn.Module,
    *,
    decay: float | None = None,
    count: int | None = None,
    where: Where = None,
) -> Iterator[nn.Module]:
    """Average the BatchNorm running statistics with the weights, around one averaging step.

    Put the step that averages the weights inside the block; on exit the running statistics of
    ``averaged`` are those before the block moved toward ``model``'s with the weights' rule
    (see the module notes), and ``num_batches_tracked`` is the model's (the statistics
    summarize its updates up to now). The rule is read from the helper where it can be:

    * ``AveragedModel`` with its default (equal weights): the :math:`(n+1)`-th model of
      ``n_averaged = n`` weighs :math:`1/(n+1)`; with an EMA function pass ``decay=`` (its
      first update copies, as it does for the weights);
    * timm ``ModelEmaV2``/``ModelEmaV3``: ``decay=`` its ``decay`` (pass
      ``decay=ema.get_decay(step)`` when you call ``ema.update(model, step)`` with a warmup);
    * any other module (a second copy you average yourself): ``decay=`` or ``count=``.

    When the block raises, or the model's statistics hold NaN/Inf, the running statistics of
    ``averaged`` are put back as they were before the block (whatever the helper wrote into
    them); the weights are the helper's. The exact alternative is :func:`bnkit.recalibrate` on
    training data once the weights are averaged.

    Args:
        averaged: the averaged model, or the helper that holds it.
        model: the model being trained (its current statistics are averaged in).
        decay: EMA decay: the statistics keep ``decay`` of their value and take
            ``1 - decay`` of the model's.
        count: equal weights: how many models the average holds after this step (1 copies).
        where: which layers of the averaged model; every layer with running statistics if
            None.

    Yields:
        The module that holds the averaged weights.

    Raises:
        LayerError: a layer without a counterpart of the same shape in ``model``, no rule
            given where none can be read, or an ``AveragedModel`` whose block did not average.
        PolicyError: both ``decay`` and ``count``, or a value out of range.

    Examples:
        >>> import torch, torch.nn as nn, bnkit
        >>> from torch.optim.swa_utils import AveragedModel
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
        >>> swa, snapshots = AveragedModel(model), []
        >>> for epoch in range(3):
        ...     _ = model(torch.randn(16, 4) + epoch)    # an epoch of training
        ...     snapshots.append(model[1].running_mean.clone())
        ...     with bnkit.average_stats(swa, model):   # equal weights, as for the weights
        ...         swa.update_parameters(model)
        >>> torch.allclose(swa.module[1].running_mean, torch.stack(snapshots).mean(0))
        True
    """
    weight = _weight(averaged, decay, count)
    inner, source = _inner(averaged), unwrap(model)
    pairs = _pairs(inner, source, where)
    before = [_copy(mine) for _, mine, _ in pairs]
    swa = averaged if isinstance(averaged, AveragedModel) else None
    steps = None if swa is None else int(swa.n_averaged)
    try:
        yield inner
        if swa is not None and int(swa.n_averaged) == steps:
            raise LayerError(
                "the average_stats block did not average: AveragedModel.n_averaged did not "
                "change; call update_parameters(model) inside it"
            )
        new = _averaged(pairs, before, weight)
    except BaseException:
        _write(pairs, before, counters=False)  # the statistics as they were before the block
        raise
    _write(pairs, new, counters=True)


def _copy(layer: nn.Module) -> tuple[Tensor, Tensor]:
    stats = _stats(layer)
    assert stats is not None
    return stats[0].detach().to(torch.float64, copy=True), stats[1].detach().to(
        torch.float64, copy=True
    )


def _averaged(
    pairs: list[tuple[str, nn.Module, nn.Module]],
    before: list[tuple[Tensor, Tensor]],
    weight: float,
) -> list[tuple[Tensor, Tensor]]:
    """The new statistics (float64); the model's must be finite."""
    new = []
    for (name, _, other), (mean, var) in zip(pairs, before, strict=True):
        stats = _stats(other)
        assert stats is not None
        src_mean, src_var = (t.detach().to(mean.device, torch.float64) for t in stats)
        if not (bool(torch.isfinite(src_mean).all()) and bool(torch.isfinite(src_var).all())):
            raise LayerError(
                f"layer {name!r}: the model's running statistics hold NaN/Inf, so nothing was "
                "averaged; fix or recalibrate the model's statistics first"
            )
        new.append((mean + weight * (src_mean - mean), var + weight * (src_var - var)))
    return new


def _write(
    pairs: list[tuple[str, nn.Module, nn.Module]],
    values: list[tuple[Tensor, Tensor]],
    counters: bool,
) -> None:
    with torch.no_grad():
        for (_, mine, other), (mean, var) in zip(pairs, values, strict=True):
            stats = _stats(mine)
            assert stats is not None
            stats[0].copy_(mean)
            stats[1].copy_(var)
            count, theirs = (getattr(m, "num_batches_tracked", None) for m in (mine, other))
            if counters and isinstance(count, Tensor) and isinstance(theirs, Tensor):
                count.copy_(theirs)
