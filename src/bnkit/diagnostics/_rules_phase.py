"""Rules about phases: what a layer does in train() and eval(), and whether it is meant."""

from __future__ import annotations

import torch.nn as nn

from bnkit.diagnostics._facts import LayerFacts, affine_params
from bnkit.diagnostics._text import listing, where
from bnkit.diagnostics.findings import Context, Finding, Severity

__all__ = ["batch_in_eval", "mixed_phase", "no_update", "stats_drift"]


def _names(layers: list[LayerFacts]) -> list[str]:
    return [f.name for f in layers]


def _by_phase(layers: list[LayerFacts]) -> list[tuple[Severity, list[LayerFacts]]]:
    """Layers in train() (the problem happens now: warning) and in eval() (it will: info)."""
    now = [f for f in layers if f.training]
    later = [f for f in layers if not f.training]
    return [(s, g) for s, g in ((Severity.WARNING, now), (Severity.INFO, later)) if g]


def stats_drift(ctx: Context) -> list[Finding]:
    hits = [
        f
        for f in ctx.layers
        if not f.bnkit
        and any(not t for _, _, t in affine_params(f.layer, f.policy))
        and f.in_phase(True).updates
    ]
    every = _names(list(ctx.layers))
    out = []
    for severity, group in _by_phase(hits):
        names = _names(group)
        when = "now, in train()" if severity is Severity.WARNING else "as soon as train() is called"
        partial = any(any(t for _, _, t in affine_params(f.layer, f.policy)) for f in group)
        which = "gamma or beta" if partial else "gamma/beta"
        out.append(
            Finding(
                kind="stats_drift_with_frozen_affine",
                severity=severity,
                layers=tuple(names),
                what=(
                    f"{which} of {listing(names)} have requires_grad=False, but the running "
                    f"statistics still update {when}: {group[0].in_phase(True).text}"
                ),
                why=(
                    "requires_grad=False freezes only gamma/beta; in train() the layers keep "
                    "normalizing with batch statistics and moving running_mean/running_var "
                    "toward the new data, so eval() no longer uses the statistics gamma/beta "
                    "were trained with"
                ),
                fix=(
                    f"bnkit.apply(model, 'frozen'{where(names, every)}) fixes the statistics "
                    "too; if the drift is intended, say so with "
                    f"bnkit.apply(model, 'frozen_affine'{where(names, every)})"
                ),
            )
        )
    return out


def no_update(ctx: Context) -> list[Finding]:
    hits = []
    for f in ctx.layers:
        train, evaluate = f.in_phase(True), f.in_phase(False)
        if not f.bnkit and train.batch and not train.updates and evaluate.batch is False:
            hits.append(f)
    every = _names(list(ctx.layers))
    out = []
    for severity, group in _by_phase(hits):
        names = _names(group)
        causes = sorted({_no_update_cause(f.layer) for f in group})
        out.append(
            Finding(
                kind="no_update_but_batch_stats",
                severity=severity,
                layers=tuple(names),
                what=(
                    f"{listing(names)} never update their running statistics "
                    f"({', '.join(causes)}), but in train() they still normalize each batch "
                    "with its own statistics"
                ),
                why=(
                    "stopping the updates is not eval(): in train() outputs depend on the rest "
                    "of the batch and the model learns on batch-normalized activations, while "
                    "eval() normalizes with the fixed running statistics, so the two phases "
                    "disagree"
                ),
                fix=(
                    f"bnkit.apply(model, 'frozen_stats'{where(names, every)}) normalizes with "
                    "the running statistics in both phases and never updates them"
                ),
            )
        )
    return out


def _no_update_cause(layer: nn.Module) -> str:
    if getattr(layer, "momentum", None) == 0:
        return "momentum=0"
    if getattr(layer, "track_running_stats", True) is False:
        return "track_running_stats=False set after construction"
    return "their policy"


def batch_in_eval(ctx: Context) -> list[Finding]:
    hits = [f for f in ctx.layers if f.in_phase(False).batch]
    every = _names(list(ctx.layers))
    out = []
    for managed in (False, True):
        group = [f for f in hits if f.bnkit == managed]
        if not group:
            continue
        names = _names(group)
        how = "their bnkit policy says so" if managed else "built with track_running_stats=False"
        fix = (
            "intended with this policy (test-time adaptation); evaluate with fixed, large batches"
            " and never a batch of one"
            if managed
            else "to normalize with running statistics, rebuild the layers with "
            "track_running_stats=True and estimate them (bnkit.recalibrate(model, data)); if "
            "batch statistics at test time are intended, say so with "
            f"bnkit.apply(model, 'batch_stats'{where(names, every)})"
        )
        out.append(
            Finding(
                kind="batch_stats_in_eval",
                severity=Severity.INFO if managed else Severity.WARNING,
                layers=tuple(names),
                what=(
                    f"in eval() {listing(names)} normalize with the batch's own statistics ({how})"
                ),
                why=(
                    "a prediction depends on which other samples share its batch and on the "
                    "batch size; a batch of one fails in these layers"
                ),
                fix=fix,
            )
        )
    return out


def mixed_phase(ctx: Context) -> list[Finding]:
    root = ctx.model.training
    hits = [f for f in ctx.layers if f.training != root and f.in_phase(True) != f.in_phase(False)]
    if not hits:
        return []
    names = _names(hits)
    every = _names(list(ctx.layers))
    if root:
        frozen = all(f.affine_frozen for f in hits)
        fix = (
            f"bnkit.freeze(model{where(names, every)}) (or affine=False to keep gamma/beta "
            "training)"
            if frozen
            else f"bnkit.freeze(model, affine=False{where(names, every)}) ('frozen_stats'; "
            "or bnkit.freeze(model) to fix gamma/beta too)"
        )
        what = (
            f"{listing(names)} are in eval() inside a model in train(): right now they "
            f"{hits[0].now.text}"
        )
        why = (
            "a layer's phase is undone by the next model.train() (typically the first line of "
            "the next epoch); from then on they normalize with batch statistics and update "
            "their running statistics again"
        )
        fix += " keeps this behaviour through model.train() and model.eval()"
    else:
        what = (
            f"{listing(names)} are in train() inside a model in eval(): right now they "
            f"{hits[0].now.text}"
        )
        why = (
            "evaluation outputs depend on the batch and the evaluation data moves the running "
            "statistics; the next model.eval() undoes it"
        )
        fix = (
            "call model.eval() after setting the phases; if batch statistics at test time are "
            f"intended, say so with bnkit.apply(model, 'batch_stats'{where(names, every)})"
        )
    return [
        Finding(
            kind="unmanaged_mixed_phase",
            severity=Severity.WARNING,
            layers=tuple(names),
            what=what,
            why=why,
            fix=fix,
        )
    ]
