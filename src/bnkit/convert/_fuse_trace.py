"""Finding foldable pairs on a real forward of an example input, operation by operation.

For models torch.fx cannot trace (shape-dependent padding, data-dependent branches), and for
Linear layers on token sequences, the pairs are found by running the model once on a copy,
under ``torch.no_grad()``, with module hooks that keep the call stack and a
``TorchDispatchMode`` that sees every tensor operation. The output of each Conv/ConvTranspose/
Linear call is *tracked*, together with the dimension that holds its features (1 for a
convolution, 0 for its unbatched form, the last for a Linear). Pure layout operations
(``view``/``reshape``/``flatten``, ``transpose``/``permute``, ``squeeze``/``unsqueeze``,
``clone``, splits and slices along another dimension) pass the tracking on, with the feature
dimension moved to where it lands. A pair ``(layer, bn)`` folds only when

* every call of ``bn`` receives a tracked tensor of ``layer`` with the features in dimension 1
  (the dimension BatchNorm normalizes), and
* every tracked tensor of ``layer`` is read by nothing but ``bn``'s own forward — no other
  operation, no other module, not the model's output — and ``layer``'s weight and bias are read
  only by its own forward.

Anything else leaves the pair alone, with what was seen as the reason. What the forward of one
example input shows is assumed of every input: a model whose dataflow changes with the input
(branches on values) may route other inputs differently, and tensors kept in Python attributes
are not followed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import weakref
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from bnkit.convert._fold import FOLDABLE
from bnkit.convert._fuse_plan import Planner
from bnkit.errors import InputError
from bnkit.layers.select import is_bn_layer

__all__ = ["find_by_forward"]

aten = torch.ops.aten
_RESHAPES = {
    aten.view.default,
    aten._unsafe_view.default,
    aten._reshape_alias.default,
    aten.reshape.default,
    aten.flatten.using_ints,
    aten.unsqueeze.default,
    aten.squeeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
}
_SAME = {aten.clone.default, aten.alias.default, aten.detach.default}
# Operations that take a part of a tensor along one dimension (its position in the arguments).
_PIECES = {
    aten.split.Tensor: 2,
    aten.split_with_sizes.default: 2,
    aten.chunk.default: 2,
    aten.slice.Tensor: 1,
    aten.narrow.default: 1,
    aten.select.int: 1,
    aten.unbind.int: 1,
}
_DROPS_DIM = {aten.select.int, aten.unbind.int}
_LAYOUT = {
    *_RESHAPES,
    *_SAME,
    *_PIECES,
    aten.t.default,
    aten.transpose.int,
    aten.permute.default,
}
_SHAPE_ONLY = {
    aten.sym_size.int,
    aten.sym_stride.int,
    aten.sym_numel.default,
    aten.sym_storage_offset.default,
    aten.is_contiguous.default,
    aten.is_contiguous.memory_format,
}


def _dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _reshaped(axis: int, before: list[int], after: list[int]) -> int | None:
    """Where dimension ``axis`` lands in a row-major reshape, or None if it is split/merged.

    Element ``(pre, c, post)`` has flat index ``(pre * C + c) * P + post``; it keeps its ``c`` in
    dimension ``b`` of the result exactly when the dimensions before ``b`` hold as many elements
    as those before ``axis`` and dimension ``b`` has size ``C``.
    """
    if math.prod(before) == 0:
        return None  # an empty tensor says nothing about where the features go
    prefix, run = math.prod(before[:axis]), 1
    for b, size in enumerate(after):
        if run == prefix and size == before[axis]:
            return b
        run *= size
        if run > prefix:
            return None
    return None


def _follow(
    func: Any, t: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any], axis: int, out: Any
) -> int | None:
    """The feature dimension of ``func``'s result(s), None when ``func`` is not pure layout."""
    ndim = t.dim()
    if func in _SAME:
        return axis
    if func in _RESHAPES:
        assert isinstance(out, Tensor)
        return _reshaped(axis, list(t.shape), list(out.shape))
    if func is aten.t.default:
        return axis if ndim < 2 else 1 - axis
    if func is aten.transpose.int:
        a, b = _dim(args[1], ndim), _dim(args[2], ndim)
        return b if axis == a else a if axis == b else axis
    if func is aten.permute.default:
        return [_dim(d, ndim) for d in args[1]].index(axis)
    if func in _PIECES:
        at = _PIECES[func]
        dim = _dim(args[at] if len(args) > at else kwargs.get("dim", 0), ndim)
        if dim == axis:
            return None
        return axis - (dim < axis) if func in _DROPS_DIM else axis
    return None


def _features(layer: nn.Module, output: Tensor) -> int:
    """The dimension of ``output`` that holds ``layer``'s output features."""
    if isinstance(layer, nn.Linear):
        return output.dim() - 1
    assert isinstance(layer, nn.modules.conv._ConvNd)
    batched = output.dim() == len(layer.kernel_size) + 2  # else PyTorch's unbatched (C, ...)
    return 1 if batched else 0


@dataclasses.dataclass(eq=False)
class _Track:
    """The outputs of one call of a foldable layer."""

    layer: str
    readers: set[str] = dataclasses.field(default_factory=set)
    """BatchNorm layers whose forward read it."""
    elsewhere: str | None = None
    """The first other use."""
    empty: tuple[int, ...] | None = None
    """The shape of an output without values (it shows nothing about the dataflow)."""


class _Recorder(TorchDispatchMode):  # type: ignore[no-untyped-call]
    def __init__(self, probe: nn.Module) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.names = {id(m): n for n, m in probe.named_modules()}
        self.stack: list[tuple[str, set[int]]] = []  # (module name, tensors a BN may read)
        self.live: dict[int, tuple[weakref.ref[Tensor], _Track, int]] = {}
        self.made: dict[int, tuple[weakref.ref[Tensor], str, str | None]] = {}
        """How each other tensor was made, and the layer whose output it derives from."""
        self.tracks: list[_Track] = []
        self.inputs: dict[str, list[tuple[_Track, int] | str]] = {}
        """Per BatchNorm call: the track and feature dimension of its input, or its origin."""
        self.behind: dict[str, set[str]] = {}
        """Layers whose output a BatchNorm input was reshaped from (not passed on as is)."""
        self.owner: dict[int, str] = {}  # a layer's weight/bias or a BN's tensors -> its name
        self.misuse: dict[str, str] = {}
        for name, m in probe.named_modules():
            if isinstance(m, FOLDABLE) or is_bn_layer(m):
                for t in [*m._parameters.values(), *m._buffers.values()]:
                    if t is not None:
                        self.owner[id(t)] = name

    def _where(self) -> str:
        return f"in {self.stack[-1][0]!r}" if self.stack and self.stack[-1][0] else "in forward"

    def tracked(self, t: Any) -> tuple[_Track, int] | None:
        hit = self.live.get(id(t)) if isinstance(t, Tensor) else None
        return (hit[1], hit[2]) if hit is not None and hit[0]() is t else None

    def origin(self, t: Any) -> str:
        hit = self.made.get(id(t)) if isinstance(t, Tensor) else None
        if hit is not None and hit[0]() is t:
            return hit[1]
        return "the model input" if isinstance(t, Tensor) else f"a {type(t).__name__}"

    def source(self, t: Tensor) -> str | None:
        hit = self.made.get(id(t))
        return hit[2] if hit is not None and hit[0]() is t else None

    def track(self, t: Tensor, track: _Track, axis: int) -> None:
        self.live[id(t)] = (weakref.ref(t), track, axis)

    # ------------------------------------------------------------------ module hooks
    def before(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        name = self.names.get(id(module), "")
        allowed: set[int] = set()
        if is_bn_layer(module):
            x = args[0] if args else None
            hit = self.tracked(x)
            self.inputs.setdefault(name, []).append(hit or self.origin(x))
            if hit is None and isinstance(x, Tensor) and self.source(x) is not None:
                self.behind.setdefault(name, set()).add(str(self.source(x)))
            if hit is not None:
                hit[0].readers.add(name)
                allowed.add(id(x))
        self.stack.append((name, allowed))

    def after(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        name, _ = self.stack.pop()
        if isinstance(output, Tensor):
            self.made[id(output)] = (
                weakref.ref(output),
                f"the output of {name!r} ({type(module).__name__})",
                self.source(output),
            )
            if isinstance(module, FOLDABLE):
                track = _Track(name, empty=tuple(output.shape) if output.numel() == 0 else None)
                self.tracks.append(track)
                self.track(output, track, _features(module, output))

    # ------------------------------------------------------------------ operations
    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _SHAPE_ONLY:
            return out
        source: str | None = None  # a layer whose output this operation computes from
        for t in tree_leaves((args, kwargs)):
            if not isinstance(t, Tensor):
                continue
            hit = self.tracked(t)
            if hit is not None and not any(id(t) in allowed for _, allowed in self.stack):
                track, axis = hit
                moved = _follow(func, t, tuple(args), kwargs, axis, out)
                results = [o for o in tree_leaves(out) if isinstance(o, Tensor)]
                if moved is None or not results:
                    track.elsewhere = track.elsewhere or f"{func} {self._where()}"
                    source = track.layer if func in _LAYOUT else None
                else:
                    for o in results:
                        self.track(o, track, moved)
            if func in _LAYOUT:  # a reshaped part of a layer's output, its features moved
                source = source or self.source(t)
            owner = self.owner.get(id(t))
            if owner is not None and owner not in {n for n, _ in self.stack}:
                self.misuse.setdefault(owner, f"{func} {self._where()}")
        text = f"the result of {func} {self._where()}"
        if source is not None:
            text += f", computed from the output of {source!r}"
        for o in tree_leaves(out):
            if isinstance(o, Tensor) and self.tracked(o) is None:
                self.made[id(o)] = (weakref.ref(o), text, source)
        return out


def _call(model: nn.Module, example_input: Any) -> Any:
    if isinstance(example_input, Mapping):
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


def _record(probe: nn.Module, example_input: Any) -> _Recorder:
    recorder = _Recorder(probe)
    handles = []
    devices = sorted({t.device.index or 0 for t in probe.parameters() if t.is_cuda})
    try:
        for m in probe.modules():
            handles.append(m.register_forward_pre_hook(recorder.before, prepend=True))
            handles.append(m.register_forward_hook(recorder.after, always_call=True))
        with torch.random.fork_rng(devices=devices), torch.no_grad(), recorder:
            out = _call(probe, example_input)
    except Exception as err:
        text = " ".join(str(err).split())[:300]
        raise InputError(
            f"the forward of the example input raised {type(err).__name__}: {text}; fuse "
            "follows one forward of the model to find the pairs, so example_input must be "
            "something the model takes (a tensor, a tuple of arguments or a dict of keyword "
            "arguments)"
        ) from err
    finally:
        for h in handles:
            h.remove()
    for t in tree_leaves(out):
        hit = recorder.tracked(t)
        if hit is not None:
            hit[0].elsewhere = hit[0].elsewhere or "returned by the model"
    return recorder


def _judge(rec: _Recorder, bn_name: str) -> tuple[str | None, str]:
    """``(layer, "")`` when ``bn_name`` may fold into ``layer``, else ``(None, reason)``."""
    calls = rec.inputs.get(bn_name)
    if not calls:
        return None, "not reached by the forward of the example input"
    hits = [c for c in calls if not isinstance(c, str)]
    for candidate in sorted({t.layer for t, _ in hits} | rec.behind.get(bn_name, set())):
        shapes = [t.empty for t in rec.tracks if t.layer == candidate and t.empty is not None]
        if shapes:
            return None, (
                f"the example input gave {candidate!r} an empty output {shapes[0]}, which shows "
                "nothing of where its values go; use an example input with samples"
            )
    for seen in calls:
        if isinstance(seen, str):
            return None, f"no Conv/ConvTranspose/Linear right before it (its input is {seen})"
    layers = sorted({track.layer for track, _ in hits})
    if len(layers) > 1:
        return None, f"its calls read the outputs of different layers ({', '.join(layers)})"
    layer = layers[0]
    for _, axis in hits:
        if axis != 1:
            return None, (
                f"it normalizes dimension 1 of its input, but {layer!r}'s features are in "
                f"dimension {axis} there: its channels are not {layer!r}'s output features"
            )
    for track in (t for t in rec.tracks if t.layer == layer):
        if track.elsewhere:
            return None, f"the output of {layer!r} is also used ({track.elsewhere})"
        others = sorted(track.readers - {bn_name})
        if others:
            return None, f"the output of {layer!r} also feeds {others[0]!r}"
    if layer in rec.misuse:
        return None, f"the weight or bias of {layer!r} is also used ({rec.misuse[layer]})"
    if bn_name in rec.misuse:
        return None, f"its tensors are also used outside its forward ({rec.misuse[bn_name]})"
    return layer, ""


def find_by_forward(planner: Planner, example_input: Any) -> None:
    """Propose the pairs of ``planner.root`` seen on a forward of ``example_input``.

    Raises:
        InputError: the forward raised.
    """
    rec = _record(copy.deepcopy(planner.root), example_input)
    modules = dict(planner.root.named_modules())
    for bn_name in planner.names:
        layer, why = _judge(rec, bn_name)
        if layer is None:
            planner.leave(bn_name, why)
        else:
            planner.propose(layer, modules[layer], bn_name, modules[bn_name])
