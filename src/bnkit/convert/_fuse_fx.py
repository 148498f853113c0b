"""Finding foldable pairs on the torch.fx graph of a model (no example input needed).

A pair is a Conv/ConvTranspose/Linear module call whose only user is a BatchNorm module call,
each module called once, and whose weight and bias are not read anywhere else in the graph.
A convolution's output channels are dimension 1 of a batched output, where BatchNorm
normalizes: a Conv{1,2,3}d pairs with a BatchNorm layer of the same dimensionality (the graph
has no shapes, so a Conv1d's input is taken to be batched, ``(N, C, L)``; PyTorch's unbatched
``(C, L)`` would put the channels in dimension 0). A Linear's features are its *last*
dimension, which is dimension 1 only for a 2D ``(N, C)`` output, and the graph does not hold
shapes: a Linear→BatchNorm pair folds only when the Linear's input is
known to be flat (``nn.Flatten()``, ``torch.flatten(x, 1)``, ``x.flatten(1)``); otherwise the
report asks for an example input. A model fx cannot trace folds nothing without one.
"""

from __future__ import annotations

from typing import Any

import torch.fx
import torch.nn as nn
from torch import Tensor

from bnkit.convert._fold import FOLDABLE
from bnkit.convert._fuse_plan import Planner
from bnkit.convert.frozen import FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d
from bnkit.layers.select import is_bn_layer

__all__ = ["find_by_fx"]

NO_TRACE = "torch.fx could not trace the model; pass example_input= to follow a real forward"


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            is_bn_layer(m)
            or isinstance(m, FOLDABLE)
            or super().is_leaf_module(m, module_qualified_name)
        )


def _resolve(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


def _origin(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        module = modules[str(node.target)]
        return f"the output of {str(node.target)!r} ({type(module).__name__})"
    if node.op == "placeholder":
        return "the model input"
    if node.op == "call_method":
        return f"the result of .{node.target}()"
    return f"the result of {getattr(node.target, '__name__', node.target)}"


_LAYOUT = {
    "flatten", "reshape", "view", "view_as", "reshape_as", "transpose", "permute", "movedim",
    "swapaxes", "t", "squeeze", "unsqueeze", "contiguous", "chunk", "split", "narrow", "getitem",
}  # fmt: skip


def _layer_behind(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """The foldable layer whose output ``node`` only reshapes (flatten, transpose, chunk...)."""
    for _ in range(8):
        if node.op == "call_module":
            return str(node.target) if isinstance(modules[str(node.target)], FOLDABLE) else None
        name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
        if node.op not in ("call_method", "call_function") or name not in _LAYOUT:
            return None
        if not node.args:
            return None
        first = node.args[0]
        if not isinstance(first, torch.fx.Node):
            return None
        node = first
    return None


def _flat(node: Any, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` is surely a 2D ``(N, C)`` tensor: a flatten from dimension 1 on."""
    if not isinstance(node, torch.fx.Node):
        return False
    if node.op == "call_module":
        m = modules[str(node.target)]
        return isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1
    is_flatten = (node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target == "flatten"
    )
    if not is_flatten:
        return False
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    return bool(start == 1 and end == -1)


_BN_RANK: tuple[tuple[int, tuple[type[nn.Module], ...]], ...] = (
    (1, (nn.BatchNorm1d, nn.LazyBatchNorm1d, FrozenBatchNorm1d)),
    (2, (nn.BatchNorm2d, nn.LazyBatchNorm2d, FrozenBatchNorm2d)),
    (3, (nn.BatchNorm3d, nn.LazyBatchNorm3d, FrozenBatchNorm3d)),
)


def _rank(m: nn.Module) -> int:
    """Spatial dimensions of a convolution, or of a BatchNorm class that says (else 0)."""
    if isinstance(m, nn.modules.conv._ConvNd):
        return len(m.kernel_size)
    return next((dims for dims, classes in _BN_RANK if isinstance(m, classes)), 0)


def find_by_fx(planner: Planner) -> None:
    """Propose the pairs of ``planner.root`` found on its fx graph."""
    root = planner.root
    try:
        graph = _Tracer().trace(root)
    except Exception as err:
        text = str(err).strip()
        message = text.splitlines()[0] if text else ""
        planner.untraced.append((type(root).__name__, f"{type(err).__name__}: {message}"))
        for name in planner.names:
            planner.leave(name, NO_TRACE)
        return
    modules = dict(root.named_modules())
    calls = [n for n in graph.nodes if n.op == "call_module"]
    count: dict[int, int] = {}
    for node in calls:
        key = id(modules[str(node.target)])
        count[key] = count.get(key, 0) + 1
    read = {
        id(obj)
        for n in graph.nodes
        if n.op == "get_attr" and isinstance(obj := _resolve(root, str(n.target)), Tensor)
    }
    for node in calls:
        bn = modules[str(node.target)]
        if not is_bn_layer(bn):
            continue
        bn_name = str(node.target)
        source = node.args[0] if node.args else None
        if not isinstance(source, torch.fx.Node):
            planner.leave(bn_name, "no Conv/ConvTranspose/Linear right before it")
            continue
        src = modules.get(str(source.target)) if source.op == "call_module" else None
        src_name = str(source.target)
        if src is None or not isinstance(src, FOLDABLE):
            why = "no Conv/ConvTranspose/Linear right before it (its input is "
            why += _origin(source, modules)
            layer = _layer_behind(source, modules)
            if layer is not None:
                why += f", computed from the output of {layer!r}; pass example_input= so that "
                why += "bnkit follows the layout"
            planner.leave(bn_name, why + ")")
        elif count[id(bn)] > 1 or count[id(src)] > 1:
            planner.leave(bn_name, "it or the layer before it is called more than once")
        elif len(source.users) != 1:
            planner.leave(bn_name, f"the output of {src_name!r} is also used elsewhere")
        elif any(id(getattr(src, a, None)) in read for a in ("weight", "bias")):
            planner.leave(bn_name, f"the weight or bias of {src_name!r} is also read in forward")
        elif _rank(src) and _rank(bn) and _rank(src) != _rank(bn):
            planner.leave(
                bn_name,
                f"{src_name!r} is a {type(src).__name__} and the layer a {type(bn).__name__}: "
                "its channels cannot be dimension 1 of a batched convolution output",
            )
        elif isinstance(src, nn.Linear) and not _flat(source.args[0], modules):
            planner.leave(
                bn_name,
                f"BatchNorm normalizes dimension 1, which holds {src_name!r}'s features only "
                "if its output is 2D (N, C), and the fx graph has no shapes; pass "
                "example_input= so that bnkit sees the layout",
            )
        else:
            planner.propose(src_name, src, bn_name, bn)
