"""``bnkit.check``: the BatchNorm pitfall detector.

Every rule in :mod:`bnkit.diagnostics.rules`' table runs on the model's layers as they are;
rules that need an example input run on what one forward under ``torch.no_grad()`` showed, and
rules that need an optimizer compare its param groups with the layers. Nothing about the model
changes: phases, parameters, buffers, ``requires_grad`` and gradients are put back (also when
the example forward raises), and the random number generators are forked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch.nn as nn

from bnkit.diagnostics._example import Probe, run_probe
from bnkit.diagnostics._facts import as_module, facts
from bnkit.diagnostics._rules_input import DOMAIN_THRESHOLD
from bnkit.diagnostics.findings import Context, Finding, Severity
from bnkit.diagnostics.rules import kinds, rules
from bnkit.errors import DiagnosticError

__all__ = ["check", "errors"]


def check(
    model: nn.Module,
    example_input: Any = None,
    optimizer: Any = None,
    *,
    domain_threshold: float = DOMAIN_THRESHOLD,
    min_values_per_channel: int = 8,
    ignore: Iterable[str] = (),
) -> list[Finding]:
    """Find the BatchNorm mistakes in a model: frozen-but-drifting, stale, shared layers, ...

    Args:
        model: the model (DDP and ``torch.compile`` wrappers are seen through).
        example_input: a batch the model takes (a tensor; a tuple/list of positional
            arguments; or a dict of keyword arguments). Enables ``tiny_batch``,
            ``domain_shift``, ``shared_layer``, ``double_update`` (plain layers inside an
            activation-checkpointed segment) and ``updates_in_eval_loop`` (``check`` called
            under ``torch.no_grad()`` on a model in ``train()``), and makes
            ``conv_bias_before_bn`` follow the data. The forward runs in the model's current
            phases, under ``torch.no_grad()``, while a copy of every parameter and buffer is
            held to put back (so it needs that much extra memory).
        optimizer: an optimizer (anything with ``param_groups``) or a sequence of them.
            Enables ``frozen_param_in_optimizer``, ``trainable_bn_not_in_optimizer`` and
            ``bn_weight_decay``. Parameters are matched by identity.
        domain_threshold: a layer shows a ``domain_shift`` when the mean over its channels of
            the symmetric KL divergence between the batch's and the running statistics exceeds
            this (see :mod:`bnkit.diagnostics._rules_input`).
        min_values_per_channel: batch statistics from fewer values per channel are a
            ``tiny_batch`` warning (one value is an error).
        ignore: finding kinds to leave out.

    Returns:
        The findings, errors first. An empty list means nothing was found.

    Raises:
        DiagnosticError: ``model`` is not an ``nn.Module``, an unknown kind in ``ignore``, a
            bad setting, something without ``param_groups`` as the optimizer, or an example
            forward that raised for another reason than a batch too small for a BatchNorm
            layer (the model is unchanged).

    Examples:
        >>> import torch.nn as nn, bnkit
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval()
        >>> [f.kind for f in bnkit.check(model)]
        ['stale_running_stats', 'conv_bias_before_bn']
    """
    root = as_module(model, "check")
    skip = _validate(ignore, domain_threshold, min_values_per_channel)
    optimizers = _optimizers(optimizer)
    layers = facts(root)
    probe: Probe | None = None
    if example_input is not None:
        probe = run_probe(root, example_input)
        _reraise(probe, min_values_per_channel)
    ctx = Context(
        model=root,
        layers=layers,
        probe=probe,
        optimizers=optimizers,
        domain_threshold=domain_threshold,
        min_values=min_values_per_channel,
    )
    found: list[Finding] = []
    for r in rules():
        if r.kind in skip or (r.needs == "input" and probe is None):
            continue
        if r.needs == "optimizer" and not optimizers:
            continue
        found.extend(r.run(ctx))
    return sorted(found, key=Finding.sort_key)


def errors(findings: Iterable[Finding]) -> list[Finding]:
    """The error-severity findings."""
    return [f for f in findings if f.severity is Severity.ERROR]


def _validate(ignore: Iterable[str], threshold: float, min_values: int) -> set[str]:
    skip = {ignore} if isinstance(ignore, str) else set(ignore)
    unknown = sorted(skip - set(kinds()))
    if unknown:
        raise DiagnosticError(
            f"ignore= names unknown finding kind {unknown[0]!r}; kinds: {', '.join(kinds())}"
        )
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise DiagnosticError(f"domain_threshold must be a positive number (got {threshold!r})")
    if not (math.isfinite(threshold) and threshold > 0):
        raise DiagnosticError(f"domain_threshold must be a positive number (got {threshold!r})")
    if isinstance(min_values, bool) or not isinstance(min_values, int) or min_values < 2:
        raise DiagnosticError(
            f"min_values_per_channel must be an integer >= 2 (got {min_values!r})"
        )
    return skip


def _optimizers(optimizer: Any) -> Sequence[Any]:
    if optimizer is None:
        return []
    many = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
    for opt in many:
        if not hasattr(opt, "param_groups"):
            raise DiagnosticError(
                f"optimizer must be a torch optimizer (with param_groups) or a list of them "
                f"(got {type(opt).__name__})"
            )
    return many


def _reraise(probe: Probe, min_values: int) -> None:
    """Raise the example forward's error unless a batch too small for a layer explains it."""
    err = probe.error
    if err is None:
        return
    if probe.failed_in is not None:
        calls = probe.calls.get(probe.failed_in, [])
        if any((c.batch or c.updates) and c.n <= 1 for c in calls):
            return
    text = " ".join(str(err).split())
    text = text if len(text) <= 300 else text[:300] + " …"
    raise DiagnosticError(
        f"the example forward raised {type(err).__name__}: {text}; the model is unchanged "
        "(check the input, or call check() without example_input)"
    ) from err
