"""Rules about the values of the running statistics."""

from __future__ import annotations

import torch

from bnkit.diagnostics._facts import LayerFacts, never_updated, running_stats
from bnkit.diagnostics._rules_loops import stale_weights
from bnkit.diagnostics._text import listing
from bnkit.diagnostics.findings import Context, Finding, Severity

__all__ = ["nonfinite", "stale"]


def stale(ctx: Context) -> list[Finding]:
    weights = {f.name for f in stale_weights(ctx)}  # told apart: weights_without_stats
    hits = [
        f
        for f in ctx.layers
        if f.now.batch is False and never_updated(f.layer) and f.name not in weights
    ]
    reached = None if ctx.probe is None else set(ctx.probe.calls)
    used = [f.name for f in hits if reached is None or f.name in reached]
    unused = [f.name for f in hits if reached is not None and f.name not in reached]
    fix = (
        "load the running statistics (load_state_dict(..., strict=True) names what is "
        "missing), or estimate them on representative data with bnkit.recalibrate(model, data)"
    )
    out = []
    if used:
        out.append(
            Finding(
                kind="stale_running_stats",
                severity=Severity.ERROR,
                layers=tuple(used),
                what=(
                    f"{listing(used)} normalize with running statistics that were never updated "
                    "(running_mean 0, running_var 1, num_batches_tracked 0), so they pass their "
                    "input through unnormalized"
                ),
                why=(
                    "the outputs are not those of the trained model: typically a model evaluated "
                    "before training, a checkpoint loaded with strict=False that lacked the "
                    "BatchNorm buffers, or statistics frozen before they were ever computed"
                ),
                fix=fix,
            )
        )
    if unused:
        out.append(
            Finding(
                kind="stale_running_stats",
                severity=Severity.WARNING,
                layers=tuple(unused),
                what=(
                    f"{listing(unused)} would normalize with running statistics that were never "
                    "updated (running_mean 0, running_var 1, num_batches_tracked 0), but the "
                    "example forward did not reach them"
                ),
                why=(
                    "they do not change the outputs of this input; an input or a path that does "
                    "reach them (another head, a branch, an auxiliary loss) gets unnormalized "
                    "values there — or they are left over from the model's constructor"
                ),
                fix=fix + ", or remove them if the model never uses them",
            )
        )
    return out


def nonfinite(ctx: Context) -> list[Finding]:
    bad: list[tuple[LayerFacts, str, bool]] = []
    for f in ctx.layers:
        mean, var = running_stats(f.layer)
        if mean is None or var is None:
            continue
        with torch.no_grad():
            nan = int((~torch.isfinite(mean) | ~torch.isfinite(var)).sum())
            neg = int((var < 0).sum())
            zero = int((var == 0).sum())
        c = mean.numel()
        if nan:
            bad.append((f, f"{f.name!r}: NaN/Inf in {nan} of {c} channels", True))
        elif neg:
            bad.append((f, f"{f.name!r}: negative running_var in {neg} of {c} channels", True))
        elif zero:
            bad.append((f, f"{f.name!r}: running_var exactly 0 in {zero} of {c} channels", False))
    out = []
    broken = [b for b in bad if b[2]]
    if broken:
        used = any(
            f.in_phase(False).batch is False or f.in_phase(True).batch is False
            for f, _, _ in broken
        )
        out.append(
            Finding(
                kind="nonfinite_running_stats",
                severity=Severity.ERROR if used else Severity.WARNING,
                layers=tuple(f.name for f, _, _ in broken),
                what="; ".join(text for _, text, _ in broken),
                why=(
                    "every output normalized with these statistics is NaN/Inf or meaningless, "
                    "and EMA updates carry NaN/Inf forward forever"
                ),
                fix=(
                    "reload the statistics from a good checkpoint, or reset and re-estimate "
                    "them: layer.reset_running_stats(), then bnkit.recalibrate(model, data) "
                    "(layers bnkit manages skip NaN/Inf batches, so they cannot be poisoned "
                    "again)"
                ),
            )
        )
    zeros = [b for b in bad if not b[2]]
    if zeros:
        out.append(
            Finding(
                kind="nonfinite_running_stats",
                severity=Severity.WARNING,
                layers=tuple(f.name for f, _, _ in zeros),
                what="; ".join(text for _, text, _ in zeros),
                why=(
                    "these channels are scaled by 1/sqrt(eps) (316 for eps=1e-5), so any "
                    "deviation from the running mean is hugely amplified; usually a dead channel "
                    "whose input was constant (e.g. always 0 after a ReLU)"
                ),
                fix=(
                    "check what feeds these channels; re-estimate the statistics on "
                    "representative data (bnkit.recalibrate(model, data)) or use a larger eps"
                ),
            )
        )
    return out
