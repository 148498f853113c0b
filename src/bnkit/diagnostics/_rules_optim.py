"""Rules that compare the BatchNorm layers with the optimizers (parameters by identity)."""

from __future__ import annotations

import dataclasses

import torch.nn as nn

from bnkit.diagnostics._facts import affine_params
from bnkit.diagnostics._text import listing, where
from bnkit.diagnostics.findings import Context, Finding, Severity

__all__ = ["frozen_in_optimizer", "trainable_not_in_optimizer", "weight_decay"]


@dataclasses.dataclass(frozen=True)
class _Slot:
    """Where a parameter sits: optimizer index, group index, the group's weight decay."""

    optimizer: int
    group: int
    weight_decay: float


@dataclasses.dataclass(frozen=True)
class _Affine:
    layer: str
    param: str
    tensor: nn.Parameter
    trainable: bool
    slots: tuple[_Slot, ...]


def _slots(ctx: Context) -> dict[int, list[_Slot]]:
    found: dict[int, list[_Slot]] = {}
    for i, opt in enumerate(ctx.optimizers):
        for j, group in enumerate(opt.param_groups):
            decay = float(group.get("weight_decay", 0.0) or 0.0)
            for p in group["params"]:
                found.setdefault(id(p), []).append(_Slot(i, j, decay))
    return found


def _affines(ctx: Context) -> list[_Affine]:
    slots = _slots(ctx)
    out = []
    seen: set[int] = set()
    for f in ctx.layers:
        for name, p, trainable in affine_params(f.layer, f.policy):
            if id(p) in seen:
                continue
            seen.add(id(p))
            out.append(_Affine(f.name, name, p, trainable, tuple(slots.get(id(p), []))))
    return out


def _label(a: _Affine) -> str:
    return f"{a.layer}.{a.param}" if a.layer else a.param


def _group(slot: _Slot, many: bool) -> str:
    opt = f"optimizer {slot.optimizer}, " if many else ""
    return f"{opt}group {slot.group}"


def frozen_in_optimizer(ctx: Context) -> list[Finding]:
    hits = [a for a in _affines(ctx) if not a.trainable and a.slots]
    if not hits:
        return []
    many = len(ctx.optimizers) > 1
    every = [f.name for f in ctx.layers]
    out = []
    # A layer with any frozen parameter holding a .grad is reported as a whole, as stepped.
    graded = {a.layer for a in hits if a.tensor.grad is not None}
    stepped = [a for a in hits if a.layer in graded]
    idle = [a for a in hits if a.layer not in graded]
    for severity, group in ((Severity.WARNING, stepped), (Severity.INFO, idle)):
        if not group:
            continue
        layers = sorted({a.layer for a in group})
        decays = sorted({s.weight_decay for a in group for s in a.slots if s.weight_decay > 0})
        decay = f" (weight_decay={', '.join(f'{d:g}' for d in decays)})" if decays else ""
        where_in = ", ".join(f"{_label(a)} in {_group(a.slots[0], many)}" for a in group[:6])
        if severity is Severity.WARNING:
            why = (
                "some of these parameters still hold a .grad (left from before they were "
                "frozen, or zeros kept by zero_grad(set_to_none=False)), so optimizer.step() "
                "still moves them: momentum carries old updates on and weight decay shrinks them"
                + (decay and f"{decay}")
            )
        else:
            why = (
                "harmless as long as their .grad stays None: PyTorch's optimizers skip a "
                "parameter without a gradient, and a frozen gamma/beta gets none. But the "
                "optimizer looks as if it trains them, and once they hold a .grad (e.g. zeros "
                "from zero_grad(set_to_none=False), or after unfreezing) momentum and weight "
                f"decay{decay} change them"
            )
        out.append(
            Finding(
                kind="frozen_param_in_optimizer",
                severity=severity,
                layers=tuple(layers),
                what=f"frozen gamma/beta are in the optimizer: {where_in}",
                why=why,
                fix=(
                    "build the optimizer from trainable parameters only: "
                    "[p for p in model.parameters() if p.requires_grad]"
                    + (" (and set their .grad to None)" if severity is Severity.WARNING else "")
                    + f"; frozen by bnkit.freeze(model{where(layers, every)})"
                ),
            )
        )
    return out


def trainable_not_in_optimizer(ctx: Context) -> list[Finding]:
    hits = [a for a in _affines(ctx) if a.trainable and not a.slots]
    if not hits:
        return []
    layers = sorted({a.layer for a in hits})
    every = [f.name for f in ctx.layers]
    return [
        Finding(
            kind="trainable_bn_not_in_optimizer",
            severity=Severity.WARNING,
            layers=tuple(layers),
            what=(
                f"gamma/beta of {listing(layers)} require gradients but are in no optimizer "
                "param group, so they never change"
            ),
            why=(
                "they still get a gradient every step (compute and memory) and the model looks "
                "trainable where it is not; if this is meant as a freeze, nothing says so, and "
                "the running statistics of these layers still move in train()"
            ),
            fix=(
                "add them to the optimizer, or freeze them explicitly: "
                f"bnkit.freeze(model, stats=False{where(layers, every)}) ('frozen_affine'; "
                "bnkit.freeze(model) also fixes the running statistics)"
            ),
        )
    ]


def weight_decay(ctx: Context) -> list[Finding]:
    hits = [a for a in _affines(ctx) if a.trainable and any(s.weight_decay > 0 for s in a.slots)]
    if not hits:
        return []
    layers = sorted({a.layer for a in hits})
    decays = sorted({s.weight_decay for a in hits for s in a.slots if s.weight_decay > 0})
    return [
        Finding(
            kind="bn_weight_decay",
            severity=Severity.INFO,
            layers=tuple(layers),
            what=(
                f"gamma/beta of {listing(layers)} are in a param group with weight_decay="
                f"{', '.join(f'{d:g}' for d in decays)}"
            ),
            why=(
                "decay pulls gamma and beta toward 0, i.e. shrinks each channel's output "
                "scale and offset; BatchNorm already makes the weights before it "
                "scale-invariant, so this is not the regularization weight decay is meant to be, "
                "and most training recipes exclude normalization parameters from it"
            ),
            fix=(
                "two param groups: norm = {id(p) for m in model.modules() if "
                "isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()}; "
                "torch.optim.AdamW([{'params': [p for p in model.parameters() if id(p) not in "
                "norm]}, {'params': [p for p in model.parameters() if id(p) in norm], "
                "'weight_decay': 0.0}], lr=..., weight_decay=...)"
            ),
        )
    ]
