"""The example forward of ``bnkit.check``: what each BatchNorm layer sees, with nothing changed.

:class:`ModelState` snapshots everything a forward may change — phases, parameter and buffer
values (and which tensor objects the modules hold), ``requires_grad``, gradients, hooks and
bnkit's one-shot probes — and puts it back. Only changed tensors are written back (those whose
version counter moved or whose values differ: BatchNorm kernels update running statistics
without a version bump), so tensors the forward did not touch keep their version and an
autograd graph built before the check still backpropagates. The random number generators are
forked, so a check does not shift a seeded run either.

Two facts about the forward's surroundings are kept for the rules: whether the caller had
gradients enabled (``check`` inside an evaluation loop's ``torch.no_grad()``), and, per call,
whether the layer ran inside an activation-checkpointed segment (found on the call stack), whose
forward the backward runs a second time.
"""

from __future__ import annotations

import dataclasses
import sys
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from types import FrameType
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.lazy import LazyModuleMixin

from bnkit import functional as BF
from bnkit.diagnostics._facts import behaviour, layer_facts, running_stats
from bnkit.errors import DiagnosticError
from bnkit.layers.select import bn_layers

__all__ = ["CHECKPOINT_MODULES", "Call", "ModelState", "Probe", "in_checkpoint", "run_probe"]

CHECKPOINT_MODULES = frozenset(
    {
        "torch.utils.checkpoint",
        "fairscale.nn.checkpoint.checkpoint_activations",
        "deepspeed.runtime.activation_checkpointing.checkpointing",
    }
)
"""Modules whose functions run a segment's forward again during the backward."""


@dataclasses.dataclass(frozen=True)
class Call:
    """One call of a BatchNorm layer during the example forward."""

    training: bool
    batch: bool | None
    """It normalized with batch statistics."""
    updates: bool | None
    """It updated its running statistics."""
    shape: tuple[int, ...]
    n: int
    """Values per channel (``numel / C``)."""
    mean: Tensor | None
    """Per-channel mean of the input (float64; None for an input that is not ``(N, C, ...)``)."""
    var: Tensor | None
    """Per-channel unbiased variance of the input (float64)."""
    running_mean: Tensor | None
    """The layer's running statistics just before the call (float64 copies)."""
    running_var: Tensor | None
    after: str | None
    """The conv/linear layer with a bias whose unmodified output is this call's input."""
    checkpointed: bool = False
    """The call ran inside an activation-checkpointed segment (its forward runs again in the
    backward)."""


@dataclasses.dataclass
class Probe:
    """What the example forward saw, layer by layer."""

    calls: dict[str, list[Call]] = dataclasses.field(default_factory=dict)
    error: BaseException | None = None
    """The exception the example forward raised, if any."""
    failed_in: str | None = None
    """The BatchNorm layer whose forward raised it, if it was one."""
    grad_enabled: bool = True
    """Gradients were enabled where ``check`` was called (False inside ``torch.no_grad()`` or
    ``torch.inference_mode()``, as in an evaluation loop)."""


class ModelState:
    """Everything a forward may change in a model, to put back with :meth:`restore`."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = list(model.modules())
        self.training = [m.training for m in self.modules]
        self.containers: list[dict[str, Any]] = []
        for m in self.modules:
            self.containers.append(
                {
                    "_parameters": OrderedDict(m._parameters),
                    "_buffers": OrderedDict(m._buffers),
                    "_forward_hooks": OrderedDict(m._forward_hooks),
                    "_forward_pre_hooks": OrderedDict(m._forward_pre_hooks),
                }
            )
        self.tensors: dict[int, tuple[Tensor, int, Tensor, bool, Tensor | None]] = {}
        for t in [*model.parameters(), *model.buffers()]:
            if id(t) not in self.tensors:
                self.tensors[id(t)] = (t, t._version, t.detach().clone(), t.requires_grad, t.grad)

    def restore(self) -> None:
        """Put the model back exactly as it was captured."""
        for m, training, saved in zip(self.modules, self.training, self.containers, strict=True):
            m.training = training
            for key in ("_parameters", "_buffers", "_forward_hooks", "_forward_pre_hooks"):
                container = getattr(m, key)
                if container != saved[key]:
                    container.clear()
                    container.update(saved[key])
        with torch.no_grad():
            for t, version, value, requires_grad, grad in self.tensors.values():
                if t._version != version or not _same(t, value):
                    t.data.copy_(value)  # .data: no version bump (see above)
                if t.requires_grad != requires_grad:
                    t.requires_grad_(requires_grad)
                if t.grad is not grad:
                    t.grad = grad


def _same(a: Tensor, b: Tensor) -> bool:
    """Equal values, NaN where the other has NaN (kernels may write without a version bump)."""
    if torch.equal(a, b):
        return True
    if not a.is_floating_point() or a.shape != b.shape:
        return False
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def _stats(x: Tensor) -> tuple[Tensor | None, Tensor | None]:
    if x.dim() < 2 or x.numel() == 0 or not x.is_floating_point():
        return None, None
    flat = x.detach().transpose(0, 1).reshape(x.shape[1], -1).double()
    var = flat.var(dim=1) if flat.shape[1] > 1 else torch.full_like(flat[:, 0], float("nan"))
    return flat.mean(dim=1), var


def _copy(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().double().clone()


def in_checkpoint() -> bool:
    """Whether the caller runs inside a checkpointed segment (a function of
    :data:`CHECKPOINT_MODULES` is on the call stack)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") in CHECKPOINT_MODULES:
            return True
        frame = frame.f_back
    return False


def _call_model(model: nn.Module, example_input: Any) -> None:
    if isinstance(example_input, Mapping):
        model(**example_input)
    elif isinstance(example_input, (tuple, list)):
        model(*example_input)
    else:
        model(example_input)


def run_probe(model: nn.Module, example_input: Any) -> Probe:
    """Run the example forward under ``torch.no_grad()``, recording every BatchNorm call.

    The model comes back exactly as it was, also when the forward raises (the exception is
    kept in :attr:`Probe.error`).

    Raises:
        DiagnosticError: the model has unmaterialized lazy layers (a forward would build them).
    """
    lazy = [
        n
        for n, m in model.named_modules()
        if isinstance(m, LazyModuleMixin) and m.has_uninitialized_params()  # type: ignore[misc]
    ]
    if lazy:
        raise DiagnosticError(
            f"layer {lazy[0]!r} is an unmaterialized lazy layer; a forward would build it and "
            "change the model, so check() does not run one; run one forward pass yourself first"
        )
    probe = Probe(grad_enabled=torch.is_grad_enabled())
    names = {id(m): n for n, m in bn_layers(model)}
    biased: dict[int, tuple[weakref.ref[Tensor], int, str]] = {}
    pending: list[str] = []

    def after_linear(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, Tensor):
                biased[id(output)] = (weakref.ref(output), output._version, name)

        return hook

    def before_bn(module: nn.Module, args: Any) -> None:
        name = names[id(module)]
        pending.append(name)
        x = args[0] if args else None
        if not isinstance(x, Tensor):
            probe.calls.setdefault(name, [])
            return
        seen = biased.get(id(x))
        after = seen[2] if seen and seen[0]() is x and seen[1] == x._version else None
        facts = layer_facts(name, module)
        now = behaviour(module, module.training, facts.policy)
        mean, var = _stats(x)
        r_mean, r_var = running_stats(module)
        probe.calls.setdefault(name, []).append(
            Call(
                training=module.training,
                batch=now.batch,
                updates=now.updates,
                shape=tuple(x.shape),
                n=BF.values_per_channel(x) if x.dim() >= 2 else x.numel(),
                mean=mean,
                var=var,
                running_mean=_copy(r_mean),
                running_var=_copy(r_var),
                after=after,
                checkpointed=in_checkpoint(),
            )
        )

    def after_bn(module: nn.Module, args: Any, output: Any) -> None:
        if pending:
            pending.pop()

    state = ModelState(model)
    handles = []
    try:
        for name, m in model.named_modules():
            if id(m) in names:
                handles.append(m.register_forward_pre_hook(before_bn))
                handles.append(m.register_forward_hook(after_bn))
            elif isinstance(m, (_ConvNd, nn.Linear)) and getattr(m, "bias", None) is not None:
                handles.append(m.register_forward_hook(after_linear(name)))
        devices = sorted({t.device.index or 0 for t in model.parameters() if t.is_cuda})
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            try:
                _call_model(model, example_input)
            except Exception as err:
                probe.error = err
                probe.failed_in = pending[-1] if pending else None
    finally:
        for h in handles:
            h.remove()
        state.restore()
    return probe
