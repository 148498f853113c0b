"""Rules about hyperparameters written in another framework's convention.

Keras and TensorFlow call the running-statistics factor ``momentum`` (or ``decay``) too, but
theirs is the weight of the *old* statistics (0.99, 0.997), while PyTorch's is the weight of
the *new batch* (0.1): a model ported with the number unchanged keeps only the last batch in
its running statistics. Its ``eps`` is usually Keras's 1e-3 as well; that one is not wrong —
the weights were trained with it, and PyTorch's 1e-5 would change every output — so it is
named next to the momentum, never flagged alone.
"""

from __future__ import annotations

from bnkit.diagnostics._facts import LayerFacts, running_stats
from bnkit.diagnostics._text import listing, where
from bnkit.diagnostics.findings import Context, Finding, Severity

__all__ = ["TF_MOMENTUM", "tensorflow_momentum"]

TF_MOMENTUM = 0.5
"""A momentum above this is taken for a TensorFlow/Keras value (PyTorch's default is 0.1)."""


def _momentum(f: LayerFacts) -> float | None:
    """The layer's ``momentum`` (the factor its updates use; a layer bnkit manages keeps its
    own there while its policy does not update), None without running statistics."""
    m = getattr(f.layer, "momentum", None)
    if running_stats(f.layer)[0] is None or isinstance(m, bool):
        return None
    return float(m) if isinstance(m, (int, float)) else None


def tensorflow_momentum(ctx: Context) -> list[Finding]:
    groups: dict[tuple[float, Severity], list[LayerFacts]] = {}
    for f in ctx.layers:
        m = _momentum(f)
        if m is None or not TF_MOMENTUM < m < 1:
            continue
        updates = f.in_phase(True).updates or f.in_phase(False).updates
        groups.setdefault((m, Severity.WARNING if updates else Severity.INFO), []).append(f)
    every = [f.name for f in ctx.layers]
    out = []
    for (m, severity), group in sorted(
        groups.items(), key=lambda g: (g[0][1] != Severity.WARNING, g[0][0])
    ):
        names = [f.name for f in group]
        ours = 1 - m
        when = "" if severity is Severity.WARNING else " once they update again (they do not now)"
        eps = {float(getattr(f.layer, "eps", 0.0)) for f in group}
        keras_eps = (
            "; their eps 1e-3 is Keras's default too, and right to keep: the weights were "
            "trained with it, and PyTorch's 1e-5 would change every output"
            if eps == {1e-3}
            else ""
        )
        out.append(
            Finding(
                kind="tensorflow_momentum",
                severity=severity,
                layers=tuple(names),
                what=(
                    f"{listing(names)} have momentum {m:g}: PyTorch's momentum is the weight of "
                    f"each new batch, so their running statistics are {m:.1%} the last batch"
                    f"{when} (TensorFlow's {m:g} averages over about {1 / ours:.0f} batches)"
                ),
                why=(
                    "Keras and TensorFlow's momentum is the weight of the old statistics, "
                    "PyTorch's the weight of the new batch; a value ported unchanged makes eval() "
                    f"normalize with the statistics of whichever batch came last{keras_eps}"
                ),
                fix=(
                    f"use the PyTorch value 1 - {m:g} = {ours:g}: set layer.momentum = "
                    f"{ours:g} on these layers, or bnkit.apply(model, bnkit.preset('pytorch', "
                    f"momentum={ours:g}){where(names, every)})"
                ),
            )
        )
    return out
