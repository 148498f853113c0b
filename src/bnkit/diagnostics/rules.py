"""The rule table of :func:`bnkit.check`: every finding kind, in order, with its rule.

Each row names a stable ``kind``, what the rule needs (the model alone, an example input, or an
optimizer), a one-line summary, and the plain function ``fn(ctx) -> list[Finding]`` in a
``_rules_*`` module that produces its findings. Adding a kind is writing one function and one
row here; the order of the rows is the order of :func:`kinds`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from bnkit.diagnostics import (
    _rules_convention,
    _rules_input,
    _rules_layout,
    _rules_loops,
    _rules_optim,
    _rules_phase,
    _rules_stats,
)
from bnkit.diagnostics.findings import Context, Finding

__all__ = ["NEEDS", "RULES", "Rule", "RuleFn", "kinds", "rules"]

RuleFn = Callable[[Context], list[Finding]]

NEEDS = ("model", "input", "optimizer")
"""What a rule can need: the model alone, an example input, or an optimizer."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """One row of the table."""

    kind: str
    needs: str
    """``"model"``, ``"input"`` (an example input) or ``"optimizer"``."""
    summary: str
    run: RuleFn


RULES: tuple[Rule, ...] = (
    Rule(
        "stats_drift_with_frozen_affine",
        "model",
        "gamma/beta frozen, but the running statistics still update in train()",
        _rules_phase.stats_drift,
    ),
    Rule(
        "no_update_but_batch_stats",
        "model",
        "running statistics never update, yet train() normalizes with batch statistics",
        _rules_phase.no_update,
    ),
    Rule(
        "batch_stats_in_eval",
        "model",
        "eval() output depends on the batch (track_running_stats=False or 'batch_stats')",
        _rules_phase.batch_in_eval,
    ),
    Rule(
        "unmanaged_mixed_phase",
        "model",
        "BatchNorm layers in another phase than the model, without a policy that pins them",
        _rules_phase.mixed_phase,
    ),
    Rule(
        "stale_running_stats",
        "model",
        "normalizing with running statistics that were never updated (mean 0, var 1)",
        _rules_stats.stale,
    ),
    Rule(
        "nonfinite_running_stats",
        "model",
        "NaN/Inf or non-positive running statistics",
        _rules_stats.nonfinite,
    ),
    Rule(
        "tiny_batch",
        "input",
        "batch statistics from too few values per channel",
        _rules_input.tiny_batch,
    ),
    Rule(
        "domain_shift",
        "input",
        "the example batch's statistics are far from the running statistics",
        _rules_input.domain_shift,
    ),
    Rule(
        "shared_layer",
        "input",
        "one BatchNorm module called more than once per forward",
        _rules_input.shared_layer,
    ),
    Rule(
        "conv_bias_before_bn",
        "model",
        "a conv/linear bias right before BatchNorm (redundant)",
        _rules_layout.conv_bias,
    ),
    Rule(
        "frozen_param_in_optimizer",
        "optimizer",
        "a frozen gamma/beta is in an optimizer's param groups",
        _rules_optim.frozen_in_optimizer,
    ),
    Rule(
        "trainable_bn_not_in_optimizer",
        "optimizer",
        "a trainable gamma/beta is in no optimizer group (it never changes)",
        _rules_optim.trainable_not_in_optimizer,
    ),
    Rule(
        "bn_weight_decay",
        "optimizer",
        "weight decay on trainable gamma/beta",
        _rules_optim.weight_decay,
    ),
    Rule(
        "tensorflow_momentum",
        "model",
        "a momentum in TensorFlow's convention (0.99: weight of the old statistics)",
        _rules_convention.tensorflow_momentum,
    ),
    Rule(
        "half_precision_running_stats",
        "model",
        "running statistics stored in float16/bfloat16 (updates are rounded away)",
        _rules_loops.half_precision,
    ),
    Rule(
        "weights_without_stats",
        "model",
        "gamma/beta trained or averaged, running statistics never updated",
        _rules_loops.weights_without_stats,
    ),
    Rule(
        "double_update",
        "input",
        "running statistics updated twice per step (activation checkpointing)",
        _rules_loops.double_update,
    ),
    Rule(
        "updates_in_eval_loop",
        "input",
        "running statistics updated under torch.no_grad() by a model left in train()",
        _rules_loops.updates_in_eval_loop,
    ),
)


def rules() -> list[Rule]:
    """Every rule, in table order."""
    return list(RULES)


def kinds() -> list[str]:
    """Every finding kind :func:`bnkit.check` knows, in table order."""
    return [r.kind for r in RULES]
