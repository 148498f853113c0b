"""Layers whose own ``forward`` computes BatchNorm: declared adapters, and reading a forward.

A ``_BatchNorm`` subclass keeps its behaviour under a policy when its ``forward`` calls
``super().forward(x)`` (bnkit's forward sits just above PyTorch's). A subclass whose forward
computes BatchNorm itself (``F.batch_norm`` on its own buffers) would bypass the policy; bnkit
manages it only when told what the layer does around the normalization::

    bnkit.register_layer(MyBNAct, after=lambda layer, y: layer.act(y))

Its forward is then replaced, while a policy holds, by ``after(layer, bn(before(layer, x)))``
with ``bn`` following the policy. timm's ``BatchNormAct2d`` (BatchNorm, then dropout and an
activation) is declared built in. A forward that neither calls ``super().forward`` nor has an
adapter is refused when a policy is applied, before anything changes.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import textwrap
from collections.abc import Callable
from typing import TypeVar

import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from bnkit.errors import LayerError

__all__ = [
    "LayerAdapter",
    "Route",
    "Verdict",
    "adapter_for",
    "calls_super_forward",
    "own_forward",
    "register_layer",
    "route",
]

Hook = Callable[[nn.Module, Tensor], Tensor]
C = TypeVar("C", bound=type[nn.Module])


@dataclasses.dataclass(frozen=True)
class LayerAdapter:
    """What a BatchNorm subclass does around the normalization in its own forward.

    Attributes:
        cls: the class whose ``forward`` this adapter stands for.
        before: applied to the input before BatchNorm (None: nothing).
        after: applied to BatchNorm's output (None: nothing).
        dims: the input ranks the forward accepts, e.g. ``(4, 4)`` (None: the class's own
            ``_check_input_dim``).
    """

    cls: type[nn.Module]
    before: Hook | None = None
    after: Hook | None = None
    dims: tuple[int, int] | None = None

    def around(self, layer: nn.Module, x: Tensor, bn: Callable[[Tensor], Tensor]) -> Tensor:
        """``after(layer, bn(before(layer, x)))``."""
        if self.before is not None:
            x = self.before(layer, x)
        y = bn(x)
        return y if self.after is None else self.after(layer, y)


_ADAPTERS: dict[type[nn.Module], LayerAdapter] = {}


def _drop_then_act(layer: nn.Module, y: Tensor) -> Tensor:
    act: nn.Module = layer.act  # type: ignore[assignment]
    drop: nn.Module = layer.drop  # type: ignore[assignment]
    out: Tensor = act(drop(y))
    return out


# Declared by qualified name, so that bnkit never imports the library that defines them.
_BUILTIN: dict[str, tuple[Hook | None, Hook | None, tuple[int, int] | None]] = {
    "timm.layers.norm_act.BatchNormAct2d": (None, _drop_then_act, (4, 4)),
    "timm.models.layers.norm_act.BatchNormAct2d": (None, _drop_then_act, (4, 4)),
}


def register_layer(
    cls: C,
    *,
    before: Hook | None = None,
    after: Hook | None = None,
    dims: tuple[int, int] | None = None,
) -> C:
    """Declare a BatchNorm subclass whose ``forward`` computes BatchNorm itself.

    Under a policy, the layer then computes ``after(layer, bn(before(layer, x)))``, where ``bn``
    follows the policy; without one it runs its own forward as before. Declaring a class again
    replaces its adapter. Returns ``cls``.

    Args:
        cls: a ``_BatchNorm`` subclass defining ``forward``.
        before: what the forward does to its input before BatchNorm (e.g. a reshape).
        after: what it does to BatchNorm's output (e.g. dropout then an activation).
        dims: the input ranks the forward accepts, e.g. ``(4, 4)`` (default: the class's own
            ``_check_input_dim``).

    Raises:
        LayerError: ``cls`` is not a BatchNorm subclass with its own forward, or the hooks are
            not callables.

    Examples:
        >>> import torch, torch.nn as nn, torch.nn.functional as F, bnkit
        >>> class BNReLU(nn.BatchNorm1d):
        ...     def forward(self, x):
        ...         return F.relu(F.batch_norm(x, self.running_mean, self.running_var,
        ...                                    self.weight, self.bias, self.training, 0.1))
        >>> _ = bnkit.register_layer(BNReLU, after=lambda layer, y: F.relu(y))
        >>> layer = bnkit.freeze(BNReLU(3)).train()
        >>> bool((layer(torch.randn(4, 3)) >= 0).all())
        True
    """
    if not (isinstance(cls, type) and issubclass(cls, _BatchNorm)):
        raise LayerError(f"register_layer needs a BatchNorm subclass (got {cls!r})")
    if "forward" not in vars(cls):
        raise LayerError(
            f"{cls.__name__} does not define forward: it runs BatchNorm's own, which bnkit "
            "already manages; there is nothing to declare"
        )
    for name, hook in (("before", before), ("after", after)):
        if hook is not None and not callable(hook):
            raise LayerError(f"register_layer({cls.__name__}): {name} must be a callable")
    if dims is not None and not (
        isinstance(dims, tuple) and len(dims) == 2 and 2 <= dims[0] <= dims[1]
    ):
        raise LayerError(f"register_layer({cls.__name__}): dims must be (low, high) ranks")
    _ADAPTERS[cls] = LayerAdapter(cls, before, after, dims)
    _ROUTES.clear()
    return cls


def adapter_for(cls: type[nn.Module]) -> LayerAdapter | None:
    """The adapter declared for exactly this class (whose ``forward`` it defines), if any."""
    found = _ADAPTERS.get(cls)
    if found is not None:
        return found
    builtin = _BUILTIN.get(f"{cls.__module__}.{cls.__qualname__}")
    return None if builtin is None else LayerAdapter(cls, *builtin)


class Verdict(enum.Enum):
    """What reading a subclass's forward found."""

    NATIVE = "native"
    """The forward is PyTorch's own (or only calls ``super().forward``): bnkit's sits below."""
    ADAPTED = "adapted"
    """A forward with a declared adapter."""
    UNREADABLE = "unreadable"
    """A forward whose source bnkit cannot read: checked on the first forward instead."""
    FOREIGN = "foreign"
    """A forward that computes BatchNorm itself, with no adapter: refused."""


@dataclasses.dataclass(frozen=True)
class Route:
    """How a managed layer's forward reaches the policy."""

    verdict: Verdict
    owner: type[nn.Module] | None = None
    """The class whose forward is adapted, unreadable or foreign."""
    adapter: LayerAdapter | None = None
    checked: tuple[type[nn.Module], ...] = ()
    """The user classes whose forward was read to call ``super().forward``."""

    @property
    def plain(self) -> bool:
        """Whether the forward is BatchNorm alone, or BatchNorm inside a declared adapter (so
        an export or a fold can reproduce it)."""
        return not self.checked and self.verdict in (Verdict.NATIVE, Verdict.ADAPTED)


_ROUTES: dict[type[nn.Module], Route] = {}


def route(cls: type[nn.Module]) -> Route:
    """Follow ``cls.forward`` down the class hierarchy to where BatchNorm is computed."""
    found = _ROUTES.get(cls)
    if found is None:
        found = _ROUTES[cls] = _follow(cls)
    return found


def _follow(cls: type[nn.Module]) -> Route:
    checked: list[type[nn.Module]] = []
    for klass in cls.__mro__:
        if "forward" not in vars(klass) or vars(klass).get("_bnkit_mixin", False):
            continue
        if klass in (_BatchNorm, nn.SyncBatchNorm):
            return Route(Verdict.NATIVE, checked=tuple(checked))
        adapter = adapter_for(klass)
        if adapter is not None:
            return Route(Verdict.ADAPTED, klass, adapter, tuple(checked))
        calls = calls_super_forward(klass)
        if calls is None:
            return Route(Verdict.UNREADABLE, klass, checked=tuple(checked))
        if not calls:
            return Route(Verdict.FOREIGN, klass, checked=tuple(checked))
        checked.append(klass)
    return Route(Verdict.NATIVE, checked=tuple(checked))


def own_forward(cls: type[nn.Module]) -> bool:
    """Whether ``cls`` (or a class below it) defines a forward other than PyTorch's."""
    for klass in cls.__mro__:
        if "forward" in vars(klass) and not vars(klass).get("_bnkit_mixin", False):
            return klass not in (_BatchNorm, nn.SyncBatchNorm)
    return False


def calls_super_forward(cls: type[nn.Module]) -> bool | None:
    """Whether ``cls.forward`` calls the next forward (``super().forward(...)`` or
    ``Base.forward(self, ...)``); None when its source cannot be read."""
    try:
        source = textwrap.dedent(inspect.getsource(vars(cls)["forward"]))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return None
    bases = {base.__name__ for base in cls.__mro__[1:]}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr != "forward":
            continue
        target = node.func.value
        if isinstance(target, ast.Call) and getattr(target.func, "id", None) == "super":
            return True
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
        if name in bases:
            return True
    return False
