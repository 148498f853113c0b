r"""Rules about real training loops: mixed precision, weight averaging, activation
checkpointing and evaluation loops.

``half_precision_running_stats``: an update moves a running statistic :math:`r` by
:math:`m\,(x - r)`; in a format with machine epsilon :math:`\varepsilon` a step below half a unit
in the last place (about :math:`\varepsilon |r| / 2`) is rounded away, so an EMA with momentum
:math:`m` stops once the batch's statistic is within about :math:`\varepsilon / (2m)` of it
(0.49 % in float16 with momentum 0.1, 3.9 % in bfloat16).

``double_update``: a segment under activation checkpointing runs its forward again in the
backward, so a plain layer in it updates twice per step with the same batch statistics: an EMA
with momentum :math:`m` then moves by :math:`1 - (1 - m)^2` per step.
"""

from __future__ import annotations

import math

import torch

from bnkit.apply import policy_of
from bnkit.diagnostics._facts import (
    LayerFacts,
    averaged_count,
    never_updated,
    running_stats,
    trained_affine,
)
from bnkit.diagnostics._text import listing, where
from bnkit.diagnostics.findings import Context, Finding, Severity

__all__ = [
    "double_update",
    "half_precision",
    "stale_weights",
    "updates_in_eval_loop",
    "weights_without_stats",
]

_HALF = (torch.float16, torch.bfloat16)


def _names(layers: list[LayerFacts]) -> list[str]:
    return [f.name for f in layers]


def _momentum(f: LayerFacts) -> float | None:
    """The factor of the layer's EMA (None: a cumulative average)."""
    policy = f.policy
    if policy is not None and policy.momentum is not None:
        return float(policy.momentum)
    m = getattr(f.layer, "momentum", None)
    return float(m) if isinstance(m, (int, float)) and not isinstance(m, bool) else None


def half_precision(ctx: Context) -> list[Finding]:
    """Running statistics held in float16/bfloat16 in layers that update them."""
    hits: list[tuple[LayerFacts, torch.dtype]] = []
    for f in ctx.layers:
        mean, var = running_stats(f.layer)
        dtype = var.dtype if var is not None else None
        if mean is None or dtype not in _HALF:
            continue
        if f.in_phase(True).updates or f.in_phase(False).updates:
            hits.append((f, dtype))
    out = []
    for severity, now in ((Severity.WARNING, True), (Severity.INFO, False)):
        group = [(f, d) for f, d in hits if bool(f.now.updates) == now]
        if not group:
            continue
        names = [f.name for f, _ in group]
        first, dtype = group[0]
        info = torch.finfo(dtype)
        m = _momentum(first)
        kind = str(dtype).removeprefix("torch.")
        if m:
            stall = (
                f"with momentum {m:g} a running statistic stops moving once the batch's is within "
                f"about {info.eps / (2 * m):.2%} of it ({first.name!r})"
            )
        else:
            stall = (
                f"a cumulative average stops moving after about {1 / info.eps:.0f} batches "
                f"({first.name!r})"
            )
        when = "" if now else " once they update (they do not in their current phase)"
        overflow = (
            f", and a running_var above {info.max:g} becomes inf" if dtype is torch.float16 else ""
        )
        out.append(
            Finding(
                kind="half_precision_running_stats",
                severity=severity,
                layers=tuple(names),
                what=(
                    f"the running statistics of {listing(names)} are {kind} and updated in that "
                    f"precision{when}: {kind} keeps about {-math.log10(info.eps):.0f} "
                    f"significant digits, so an update smaller than half its last digit is "
                    f"rounded away; {stall}"
                ),
                why=(
                    "model.half() (or .to(torch.bfloat16)) also casts BatchNorm's buffers, so "
                    f"the running statistics lag behind the data{overflow}; PyTorch's "
                    "mixed-precision recipes keep BatchNorm and its statistics in float32"
                ),
                fix=(
                    "keep these layers in float32: after model.half(), call .float() on them "
                    "(for name, m in bnkit.bn_layers(model): m.float()), or keep the model in "
                    "float32 and train under torch.autocast, which runs BatchNorm in float32"
                ),
            )
        )
    return out


def stale_weights(ctx: Context) -> list[LayerFacts]:
    """Layers whose gamma/beta were trained or averaged (or that sit in a model
    ``AveragedModel`` averaged into) while their running statistics were never updated."""
    averaged = averaged_count(ctx.model) or 0
    return [
        f
        for f in ctx.layers
        if never_updated(f.layer) and (averaged > 0 or trained_affine(f.layer))
    ]


def weights_without_stats(ctx: Context) -> list[Finding]:
    """Trained or averaged weights with running statistics still at their initial values."""
    hits = stale_weights(ctx)
    averaged = averaged_count(ctx.model) or 0
    source = (
        f"{type(ctx.model).__name__} averaged {averaged} model(s) into these layers"
        if averaged
        else "gamma/beta of these layers differ across channels (trained, averaged or loaded)"
    )
    out = []
    for severity, now in ((Severity.ERROR, False), (Severity.WARNING, True)):
        group = [f for f in hits if bool(f.now.batch) == now]
        if not group:
            continue
        names = _names(group)
        use = "normalize" if not now else "will normalize in eval()"
        out.append(
            Finding(
                kind="weights_without_stats",
                severity=severity,
                layers=tuple(names),
                what=(
                    f"{source}, but {listing(names)} {use} with running statistics that were "
                    "never updated (running_mean 0, running_var 1, num_batches_tracked 0)"
                ),
                why=(
                    "the weights are those of a trained or averaged model, the statistics those "
                    "of a freshly built one, so these layers pass their input through "
                    "unnormalized: typical of an average of the parameters only (an EMA or SWA "
                    "over model.parameters(), a mean teacher), which leaves the BatchNorm "
                    "buffers of the averaged copy as they were built, or of a checkpoint loaded "
                    "with strict=False that lacked them"
                ),
                fix=(
                    "average the running statistics with the weights, with the same rule: "
                    "`with bnkit.average_stats(averaged, model, decay=...):` around each "
                    "averaging step (or AveragedModel(..., use_buffers=True)); or estimate them "
                    "for the averaged weights on training data: "
                    "bnkit.recalibrate(averaged, data)"
                ),
            )
        )
    return out


def double_update(ctx: Context) -> list[Finding]:
    """Plain layers inside an activation-checkpointed segment that update in train()."""
    assert ctx.probe is not None
    by_name = {f.name: f for f in ctx.layers}
    hits = [
        by_name[name]
        for name, calls in ctx.probe.calls.items()
        if name in by_name
        and not by_name[name].bnkit
        and any(c.checkpointed for c in calls)
        and by_name[name].in_phase(True).updates
    ]
    every = _names(list(ctx.layers))
    out = []
    for severity, now in ((Severity.WARNING, True), (Severity.INFO, False)):
        group = [f for f in hits if f.training == now]
        if not group:
            continue
        names = _names(group)
        m = _momentum(group[0])
        effect = (
            f"with momentum {m:g} they move {1 - (1 - m) ** 2:g} of the way to the batch's "
            f"statistics per step instead of {m:g} ({group[0].name!r})"
            if m
            else "a cumulative average counts every batch twice"
        )
        when = "in train()" if now else "once train() is called"
        calls = sorted({repr(policy_of(f.layer)) for f in group})
        fix = "; ".join(
            f"bnkit.apply(model, {p}"
            + where([f.name for f in group if repr(policy_of(f.layer)) == p], every)
            + ")"
            for p in calls
        )
        out.append(
            Finding(
                kind="double_update",
                severity=severity,
                layers=tuple(names),
                what=(
                    f"{listing(names)} run inside an activation-checkpointed segment and update "
                    f"their running statistics {when}: the backward runs the segment's forward "
                    "again, so each training step updates them twice (num_batches_tracked +2); "
                    f"{effect}"
                ),
                why=(
                    "the recomputed forward sees the same batch, and a plain BatchNorm cannot "
                    "tell it from a new one: the running statistics forget past batches twice "
                    "as fast as configured"
                ),
                fix=(
                    f"give them a bnkit policy, which skips the update of a recomputed forward "
                    f"and otherwise keeps their behaviour: {fix}"
                ),
            )
        )
    return out


def updates_in_eval_loop(ctx: Context) -> list[Finding]:
    """A model in train() updating running statistics where gradients are off."""
    assert ctx.probe is not None
    if ctx.probe.grad_enabled or not ctx.model.training:
        return []
    by_name = {f.name: f for f in ctx.layers}
    hits = [
        by_name[name]
        for name, calls in ctx.probe.calls.items()
        if name in by_name
        and any(c.training and c.updates for c in calls)
        and not by_name[name].in_phase(False).updates  # a policy updating in eval means it
    ]
    if not hits:
        return []
    names = _names(hits)
    return [
        Finding(
            kind="updates_in_eval_loop",
            severity=Severity.WARNING,
            layers=tuple(names),
            what=(
                "check() ran under torch.no_grad() (an evaluation loop) with the model in "
                f"train(): {listing(names)} normalized the example batch with its own "
                "statistics and updated their running statistics with it"
            ),
            why=(
                "evaluation data moves the statistics the model is evaluated and deployed "
                "with, and each output depends on the rest of its batch; model.eval() before "
                "the loop is missing, or was undone (a trainer or callback calling model.train())"
            ),
            fix=(
                "call model.eval() before evaluating (and model.train() after); to estimate the "
                "statistics on this data on purpose, use bnkit.recalibrate(model, data)"
            ),
        )
    ]
