"""Statistic sets: the running statistics of a model's BatchNorm layers as plain tensors.

A :class:`StatSet` is a read-only mapping with the keys ``model.state_dict()`` uses for the
same buffers (``"layer1.0.bn1.running_mean"``, ``"….running_var"``,
``"….num_batches_tracked"``), so ``dict(statset)`` is a plain ``dict[str, Tensor]``. Save
either form with ``torch.save``. A plain dict loads with ``torch.load(path,
weights_only=True)``; a :class:`StatSet` with :meth:`StatSet.load` (or inside
``torch.serialization.safe_globals([bnkit.StatSet])``). bnkit never widens torch's
process-wide list of classes ``weights_only`` accepts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple, TypeVar

import torch
import torch.nn as nn
from torch import Tensor

from bnkit.errors import StatsError
from bnkit.layers.select import Where, bn_layers, select

__all__ = ["LayerStats", "StatSet", "capture_stats", "load_stats"]

M = TypeVar("M", bound=nn.Module)

_FIELDS = ("running_mean", "running_var", "num_batches_tracked")


class LayerStats(NamedTuple):
    """The statistics of one layer."""

    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor | None


def _key(layer: str, field: str) -> str:
    return f"{layer}.{field}" if layer else field


def _split(key: str) -> tuple[str, str]:
    layer, _, field = key.rpartition(".")
    if field not in _FIELDS:
        raise StatsError(
            f"statistic key {key!r} does not end in one of {', '.join(_FIELDS)} (the keys are "
            "those of model.state_dict(), e.g. 'bn1.running_mean')"
        )
    return layer, field


class StatSet(Mapping[str, Tensor]):
    """Running statistics of BatchNorm layers, keyed as in ``model.state_dict()``.

    Args:
        tensors: ``{"<layer>.running_mean": …, "<layer>.running_var": …}`` and optionally
            ``"<layer>.num_batches_tracked"`` per layer (a state-dict subset). The tensors are
            kept as given (detached); :func:`capture_stats` stores copies.

    Raises:
        StatsError: a key is not one of these, or a layer lacks its mean or variance.

    Examples:
        >>> import torch, torch.nn as nn, bnkit
        >>> stats = bnkit.capture_stats(nn.Sequential(nn.BatchNorm1d(3)))
        >>> stats.layers
        ['0']
        >>> sorted(stats)
        ['0.num_batches_tracked', '0.running_mean', '0.running_var']
    """

    __slots__ = ("_layers", "_tensors")

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        self._tensors: dict[str, Tensor] = {}
        layers: dict[str, set[str]] = {}
        for key, value in tensors.items():
            if not isinstance(value, Tensor):
                raise StatsError(f"statistic {key!r} must be a tensor (got {type(value).__name__})")
            layer, field = _split(key)
            layers.setdefault(layer, set()).add(field)
            self._tensors[key] = value.detach()
        for layer, fields in layers.items():
            for field in ("running_mean", "running_var"):
                if field not in fields:
                    raise StatsError(f"layer {layer!r} has no {_key(layer, field)!r} in the set")
        self._layers = list(layers)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor]) -> StatSet:
        """The set from :meth:`state_dict` (or any state-dict subset of BatchNorm buffers)."""
        return cls(state)

    def state_dict(self) -> dict[str, Tensor]:
        """A plain ``dict[str, Tensor]`` (same tensors), loadable with ``weights_only=True``."""
        return dict(self._tensors)

    @property
    def layers(self) -> list[str]:
        """The layer names, in order."""
        return list(self._layers)

    def layer(self, name: str) -> LayerStats:
        """The statistics of one layer."""
        if name not in self._layers:
            raise StatsError(f"no layer {name!r} in the set; its layers: {self._layers}")
        get = self._tensors.get
        mean, var = (
            self._tensors[_key(name, "running_mean")],
            self._tensors[_key(name, "running_var")],
        )
        return LayerStats(mean, var, get(_key(name, "num_batches_tracked")))

    def __getitem__(self, key: str) -> Tensor:
        return self._tensors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StatSet):
            return NotImplemented
        return self._tensors.keys() == other._tensors.keys() and all(
            torch.equal(v, other._tensors[k]) for k, v in self._tensors.items()
        )

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (StatSet, (dict(self._tensors),))

    @classmethod
    def load(cls, f: Any, map_location: Any = None) -> StatSet:
        """Load a set saved with ``torch.save`` (a StatSet or a plain dict), ``weights_only``.

        Only tensors and this class are unpickled; torch's global allow-list is left as it is.
        """
        # bnkit 0.1 saved sets under the module path bnkit.statsets
        allowed: list[Any] = [StatSet, (StatSet, "bnkit.statsets.StatSet")]
        with torch.serialization.safe_globals(allowed):
            loaded = torch.load(f, map_location=map_location, weights_only=True)
        if isinstance(loaded, StatSet):
            return loaded
        if isinstance(loaded, Mapping):
            return cls(loaded)
        raise StatsError(f"the file holds a {type(loaded).__name__}, not a statistic set")

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{n!r} ({self._tensors[_key(n, 'running_mean')].numel()} channels)"
            for n in self._layers[:4]
        )
        more = f", … ({len(self._layers)} layers)" if len(self._layers) > 4 else ""
        return f"StatSet({shown}{more})"


def _has_stats(layer: nn.Module) -> bool:
    return all(isinstance(getattr(layer, k, None), Tensor) for k in _FIELDS[:2])


def capture_stats(model: nn.Module, where: Where = None) -> StatSet:
    """A copy of the running statistics of the selected BatchNorm layers.

    With ``where=None``, every layer that has running statistics (layers built with
    ``track_running_stats=False`` have none and are skipped).

    Raises:
        SelectionError: the model has no BatchNorm layer, or ``where`` matches none.
        StatsError: an explicitly selected layer has no running statistics.
    """
    tensors: dict[str, Tensor] = {}
    for name, layer in select(model, where):
        if not _has_stats(layer):
            if where is None:
                continue
            raise StatsError(
                f"layer {name!r} has no running statistics (built with "
                "track_running_stats=False); leave it out of where="
            )
        for field in _FIELDS:
            value = getattr(layer, field, None)
            if isinstance(value, Tensor):
                tensors[_key(name, field)] = value.detach().clone()
    if not tensors:
        raise StatsError("no BatchNorm layer of the model has running statistics to capture")
    return StatSet(tensors)


def check_fits(model: nn.Module, stats: StatSet, strict: bool = True) -> list[nn.Module]:
    """The model's layer for each layer of ``stats``, after checking names and shapes."""
    layers = {name: layer for name, layer in bn_layers(model) if _has_stats(layer)}
    unknown = [name for name in stats.layers if name not in layers]
    if unknown:
        raise StatsError(
            f"the statistic set has layers the model lacks: {_names(unknown)}; the model's "
            f"BatchNorm layers with running statistics are {_names(list(layers))}"
        )
    if strict:
        missing = [name for name in layers if name not in stats.layers]
        if missing:
            raise StatsError(
                f"the statistic set has no statistics for {_names(missing)}; pass strict=False "
                "to load a set that covers only some layers"
            )
    found = []
    for name in stats.layers:
        layer, entry = layers[name], stats.layer(name)
        for field in _FIELDS:
            have_t, got_t = getattr(layer, field, None), getattr(entry, field)
            if have_t is None or got_t is None:
                continue  # a counter the model or the set lacks
            have, got = have_t.shape, got_t.shape
            if have != got:
                raise StatsError(
                    f"layer {name!r}: {field} has shape {tuple(have)} in the model but "
                    f"{tuple(got)} in the statistic set; the set comes from another model"
                )
        found.append(layer)
    return found


def load_stats(model: M, stats: StatSet, *, strict: bool = True, check_values: bool = True) -> M:
    """Copy a statistic set into the model's layers (in place; buffers keep their identity).

    Everything is checked before anything is copied, and a copy that fails part-way (a device
    or dtype the buffers cannot take) puts every layer back as it was.

    Args:
        model: the model.
        stats: the set, e.g. from :func:`capture_stats`.
        strict: require a statistic for every layer of the model that has running statistics.
        check_values: refuse NaN/Inf statistics and negative variances.

    Raises:
        StatsError: a layer of the set is not in the model, a shape differs, a tensor has no
            data (meta), a value is NaN/Inf or a variance negative (with ``check_values``), or
            (with ``strict``) a layer of the model is not in the set.
    """
    layers = check_fits(model, stats, strict)
    for name in stats.layers:
        _check_entry(name, stats.layer(name), check_values)
    buffers = [
        t for layer in layers for t in (getattr(layer, f, None) for f in _FIELDS)
        if isinstance(t, Tensor)
    ]  # fmt: skip
    saved = [t.detach().clone() for t in buffers]
    try:
        with torch.no_grad():
            for name, layer in zip(stats.layers, layers, strict=True):
                entry = stats.layer(name)
                _tensor(layer, "running_mean").copy_(entry.running_mean)
                _tensor(layer, "running_var").copy_(entry.running_var)
                counter = getattr(layer, "num_batches_tracked", None)
                if isinstance(counter, Tensor) and entry.num_batches_tracked is not None:
                    counter.copy_(entry.num_batches_tracked)
    except BaseException:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved, strict=True):
                with contextlib.suppress(RuntimeError):  # the buffer that failed
                    buffer.copy_(value)
        raise
    return model


def _check_entry(name: str, entry: LayerStats, check_values: bool) -> None:
    for field, value in zip(_FIELDS, entry, strict=True):
        if value is None:
            continue
        if value.is_meta:
            raise StatsError(f"layer {name!r}: {field} is a meta tensor (it holds no values)")
        if field == "num_batches_tracked" or not check_values:
            continue
        if not value.is_floating_point():
            raise StatsError(f"layer {name!r}: {field} must be floating point (got {value.dtype})")
        if not bool(torch.isfinite(value).all()):
            raise StatsError(
                f"layer {name!r}: {field} has NaN/Inf values; recompute the set (e.g. with "
                "bnkit.recalibrate), or pass check_values=False to load it anyway"
            )
        if field == "running_var" and bool((value < 0).any()):
            raise StatsError(
                f"layer {name!r}: running_var has negative values, which no variance has; pass "
                "check_values=False to load it anyway"
            )


def _tensor(layer: nn.Module, name: str) -> Tensor:
    value = getattr(layer, name)
    assert isinstance(value, Tensor)
    return value


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:8])
    return shown + (f", … ({len(names)} in all)" if len(names) > 8 else "")
