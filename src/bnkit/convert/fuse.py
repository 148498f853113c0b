"""``fuse``: fold BatchNorm layers whose behaviour is fixed into the layer before them.

The pairs are found on the torch.fx graph of the model (a Conv/ConvTranspose/Linear module
call whose only user is a BatchNorm module call); the fold is then made on a copy of the
model itself, which keeps its class, its forward and every other module (the folded
BatchNorm layers become ``nn.Identity``). A model, or a part, that fx cannot trace falls back
to pairing neighbours inside ``nn.Sequential`` containers (the only place where order is
known to be execution order) and to tracing its submodules one by one, with a
:class:`~bnkit.FuseWarning` that says what failed.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import warnings
from typing import TypeVar, cast

import torch.fx
import torch.nn as nn
from torch import Tensor
from torch.nn.modules.lazy import LazyModuleMixin

from bnkit.apply import policy_of
from bnkit.convert._fold import FOLDABLE, fold, out_features
from bnkit.errors import FuseWarning, LayerError
from bnkit.layers.adapters import own_forward as foreign_forward
from bnkit.layers.managed import original_class
from bnkit.layers.select import bn_layers, is_bn_layer, unwrap
from bnkit.layers.surgery import replace_modules

__all__ = ["FuseReport", "fuse", "fuse_plan"]

M = TypeVar("M", bound=nn.Module)
_log = logging.getLogger("bnkit")


@dataclasses.dataclass(frozen=True)
class FuseReport:
    """What :func:`fuse` does to a model.

    Attributes:
        fused: ``(layer, batchnorm)`` name pairs folded together.
        left: ``(batchnorm, reason)`` for every BatchNorm layer left as it is.
        untraced: ``(module, error)`` for every module torch.fx could not trace (then its
            ``nn.Sequential`` neighbours and traceable submodules were used).
    """

    fused: tuple[tuple[str, str], ...]
    left: tuple[tuple[str, str], ...]
    untraced: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        lines = [f"fused {len(self.fused)} BatchNorm layer(s), left {len(self.left)}"]
        lines += [f"  fused  {bn!r} into {layer!r}" for layer, bn in self.fused]
        lines += [f"  left   {bn!r}: {why}" for bn, why in self.left]
        lines += [f"  fx could not trace {name!r}: {err}" for name, err in self.untraced]
        return "\n".join(lines)


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            is_bn_layer(m)
            or isinstance(m, FOLDABLE)
            or super().is_leaf_module(m, module_qualified_name)
        )


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _fixed(bn: nn.Module) -> str | None:
    """Why ``bn`` cannot be folded, from its own behaviour (None when it can)."""
    if not all(isinstance(getattr(bn, k, None), Tensor) for k in ("running_mean", "running_var")):
        return "has no running statistics: it always normalizes with batch statistics"
    try:
        policy = policy_of(bn)
    except LayerError as err:
        return f"its flags describe no policy ({err})"
    training = bn.training
    phase = "train()" if training else "eval()"
    if policy.uses_batch_stats(training):
        hint = "; call model.eval() first" if not policy.uses_batch_stats(False) else ""
        return f"normalizes with batch statistics in {phase}{hint}"
    if policy.updates(training):
        return f"updates its running statistics in {phase} ({policy.describe(training)})"
    cls = original_class(bn)
    if issubclass(cls, nn.modules.batchnorm._BatchNorm) and foreign_forward(cls):
        return f"its class {cls.__name__} defines its own forward, which folding would drop"
    if bn._forward_hooks or bn._forward_pre_hooks:
        return "has forward hooks, which folding would drop"
    return None


def _foldable(layer: nn.Module) -> str | None:
    """Why ``layer`` cannot take a fold (None when it can)."""
    if isinstance(layer, LazyModuleMixin) and layer.has_uninitialized_params():
        return "is an unmaterialized lazy layer"
    base = next(c for c in FOLDABLE if isinstance(layer, c))
    if type(layer).forward is not base.forward or getattr(
        type(layer), "_conv_forward", None
    ) is not getattr(base, "_conv_forward", None):
        return f"its class {type(layer).__name__} has its own forward"
    if (
        torch.nn.utils.parametrize.is_parametrized(layer)
        or layer._forward_pre_hooks
        or layer._forward_hooks
    ):
        return "its weight is computed (parametrization or hooks)"
    return None


def _origin(node: torch.fx.Node, prefix: str, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        module = modules[str(node.target)]
        return f"the output of {_join(prefix, str(node.target))!r} ({type(module).__name__})"
    if node.op == "placeholder":
        return "the model input"
    if node.op == "call_method":
        return f"the result of .{node.target}()"
    target = node.target
    return f"the result of {getattr(target, '__name__', target)}"


class _Planner:
    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.bns = {id(m): name for name, m in bn_layers(root)}
        self.pairs: dict[str, str] = {}  # bn name -> layer name
        self.left: dict[str, str] = {}
        self.untraced: list[tuple[str, str]] = []

    def pair(self, layer_name: str, layer: nn.Module, bn_name: str, bn: nn.Module) -> None:
        why = _fixed(bn) or _foldable(layer)
        if why is None and out_features(layer) != getattr(bn, "num_features", None):
            why = f"{layer_name!r} has {out_features(layer)} output channels, the layer expects "
            why += f"{getattr(bn, 'num_features', None)}"
        if why is None:
            self.pairs[bn_name] = layer_name
        else:
            self.left.setdefault(bn_name, why)

    def analyze(self, module: nn.Module, prefix: str) -> None:
        try:
            graph = _Tracer().trace(module)
        except Exception as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else ""
            self.untraced.append(
                (prefix or type(module).__name__, f"{type(err).__name__}: {message}")
            )
            self._by_order(module, prefix)
            return
        self._by_graph(module, prefix, graph)

    def _by_graph(self, module: nn.Module, prefix: str, graph: torch.fx.Graph) -> None:
        modules = dict(module.named_modules())
        calls = [n for n in graph.nodes if n.op == "call_module"]
        count: dict[int, int] = {}
        for node in calls:
            key = id(modules[str(node.target)])
            count[key] = count.get(key, 0) + 1
        for node in calls:
            bn = modules[str(node.target)]
            if not is_bn_layer(bn):
                continue
            bn_name = _join(prefix, str(node.target))
            source = node.args[0] if node.args else None
            if not isinstance(source, torch.fx.Node):
                self.left.setdefault(bn_name, "no Conv/ConvTranspose/Linear right before it")
                continue
            src = modules.get(str(source.target)) if source.op == "call_module" else None
            src_name = _join(prefix, str(source.target))
            if src is None or not isinstance(src, FOLDABLE):
                self.left.setdefault(
                    bn_name,
                    f"no Conv/ConvTranspose/Linear right before it (its input is "
                    f"{_origin(source, prefix, modules)})",
                )
            elif count[id(bn)] > 1 or count[id(src)] > 1:
                self.left.setdefault(bn_name, "it or the layer before it is called more than once")
            elif len(source.users) != 1:
                self.left.setdefault(bn_name, f"the output of {src_name!r} is also used elsewhere")
            else:
                self.pair(src_name, src, bn_name, bn)

    def _by_order(self, module: nn.Module, prefix: str) -> None:
        children = list(module.named_children())
        if isinstance(module, nn.Sequential):
            for (a_name, a), (b_name, b) in itertools.pairwise(children):
                if isinstance(a, FOLDABLE) and is_bn_layer(b):
                    self.pair(_join(prefix, a_name), a, _join(prefix, b_name), b)
        for name, child in children:
            if not is_bn_layer(child) and not isinstance(child, FOLDABLE):
                self.analyze(child, _join(prefix, name))

    def report(self) -> FuseReport:
        names = list(self.bns.values())
        fused = tuple((self.pairs[n], n) for n in names if n in self.pairs)
        left = tuple(
            (n, self.left.get(n, "not called as a module in forward (or fx could not see it)"))
            for n in names
            if n not in self.pairs
        )
        return FuseReport(fused, left, tuple(self.untraced))


def fuse_plan(model: nn.Module) -> FuseReport:
    """What :func:`fuse` would fold, and why each other BatchNorm layer would be left."""
    planner = _Planner(unwrap(model))
    planner.analyze(planner.root, "")
    return planner.report()


def fuse(model: M) -> M:
    """A copy of the model with every foldable BatchNorm layer folded into the layer before it.

    A BatchNorm layer is folded when its output is fixed in its current phase (plain
    BatchNorm in ``eval()``, the ``frozen`` and ``frozen_stats`` policies, frozen exports: it
    normalizes with running statistics and does not update them) and it directly follows a
    Conv1d/2d/3d, ConvTranspose1d/2d/3d or Linear module whose output nothing else uses. The
    folded layer is replaced by ``nn.Identity``. The input model is not changed; DDP and
    compile wrappers are dropped from the copy. :func:`fuse_plan` gives the report (also
    logged to the ``"bnkit"`` logger at INFO level): every pair folded, and why each other
    BatchNorm layer was left.

    Linear→BatchNorm1d is folded on the assumption that the Linear output is ``(N, C)``, where
    both act on the same features.
    """
    fused = copy.deepcopy(unwrap(model))
    report = fuse_plan(fused)
    if report.untraced:
        failed = "; ".join(f"{n!r} ({e})" for n, e in report.untraced)
        warnings.warn(
            FuseWarning(
                f"torch.fx could not trace {failed}; bnkit paired layers inside nn.Sequential "
                "containers and in the submodules it could trace instead (see "
                "bnkit.fuse_plan(model) for what was left)"
            ),
            stacklevel=2,
        )
    modules = dict(fused.named_modules())
    for layer_name, bn_name in report.fused:
        fold(modules[layer_name], modules[bn_name])
    gone = {id(modules[bn]) for _, bn in report.fused}
    fused = replace_modules(fused, lambda _, m: id(m) in gone, lambda _, m: nn.Identity())
    _log.info("bnkit.fuse: %s", report)
    return cast(M, fused)
