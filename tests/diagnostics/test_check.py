"""bnkit.check: every kind fires on its trigger, with its severity and layers; a clean model is
silent; managed layers whose state is intended stay silent."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn as nn
from tests.diagnostics.models import (
    Checkpointed,
    batch,
    calibrated,
    clean,
    cnn,
    no_decay_optimizer,
    weight_only_average,
)
from torch.optim.swa_utils import AveragedModel

import bnkit
from bnkit.diagnostics import Severity, kinds

E, W, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO


@dataclasses.dataclass
class Case:
    model: nn.Module
    example: Any = None
    optimizer: Any = None
    grad: bool = True
    """Gradients enabled where check() is called (False: inside an evaluation loop)."""


def _drift_train() -> Case:
    m = clean()
    m[1].requires_grad_(False)
    return Case(m)


def _drift_eval() -> Case:
    m = clean().eval()
    m[4].bias.requires_grad_(False)  # only beta: no policy describes it, the rule still sees it
    return Case(m)


def _momentum_zero() -> Case:
    m = clean()
    m[4].momentum = 0.0
    return Case(m)


def _no_tracking_after() -> Case:
    m = clean().eval()
    m[9].track_running_stats = False
    return Case(m)


def _stale_eval() -> Case:
    return Case(cnn().eval())


def _stale_frozen() -> Case:
    return Case(bnkit.freeze(cnn(), where="1"))


def _batch_stats_native() -> Case:
    m = clean()
    m[4] = nn.BatchNorm2d(8, track_running_stats=False)
    return Case(m)


def _batch_stats_managed() -> Case:
    return Case(bnkit.apply(clean(), "batch_stats", where="9"))


def _nan() -> Case:
    m = clean()
    m[4].running_var[3] = float("nan")
    return Case(m)


def _negative() -> Case:
    m = clean()
    m[1].running_var[0] = -1.0
    return Case(m)


def _zero_var() -> Case:
    m = clean()
    m[9].running_var[2] = 0.0
    return Case(m)


def _mixed_eval_in_train() -> Case:
    m = clean()
    m[1].eval()
    m[4].eval()
    return Case(m)


def _mixed_train_in_eval() -> Case:
    m = clean().eval()
    m[9].train()
    return Case(m)


def _tiny() -> Case:
    return Case(clean(), batch(4))


def _one_value() -> Case:
    return Case(clean(), batch(1))


def _shift_train() -> Case:
    # in train() the first layer normalizes with batch statistics: only it sees the shift
    return Case(clean(), batch(32, shift=2.0, scale=3.0))


def _shift_eval() -> Case:
    return Case(clean().eval(), batch(32, shift=2.0, scale=3.0))


class Shared(nn.Module):
    def __init__(self, frozen: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, bias=False)
        self.bn = nn.BatchNorm2d(8)
        if frozen:
            self.bn.running_var.fill_(2.0)
            bnkit.freeze(self, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.bn(self.conv(x.flip(0)))


def _shared() -> Case:
    return Case(Shared(), batch(8))


def _shared_frozen() -> Case:
    return Case(Shared(frozen=True), batch(8))


def _conv_bias() -> Case:
    return Case(calibrated(cnn(bias=True)))


def _frozen_in_optimizer() -> Case:
    m = bnkit.freeze(clean(), where="4")
    return Case(m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1))


def _frozen_with_grad() -> Case:
    m = clean()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    m[9].weight.grad = torch.zeros(6)
    m[9].requires_grad_(False)
    return Case(m, optimizer=opt)


def _not_in_optimizer() -> Case:
    m = clean()
    return Case(m, optimizer=torch.optim.SGD(m[:4].parameters(), lr=0.1))


def _weight_decay() -> Case:
    m = clean()
    return Case(m, optimizer=torch.optim.AdamW(m.parameters(), weight_decay=0.05))


def _tf_momentum() -> Case:
    m = clean()
    m[4].momentum = 0.997  # ported from TensorFlow unchanged
    return Case(m)


def _tf_momentum_frozen() -> Case:
    m = clean()
    m[9].momentum = 0.99
    return Case(bnkit.freeze(m, where="9"))  # matters once it updates again


class Unreached(nn.Module):
    """A calibrated model and a head its forward never calls (stale statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = clean().eval()
        self.aux = nn.Sequential(nn.Linear(6, 4, bias=False), nn.BatchNorm1d(4))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


def _stale_unreached() -> Case:
    return Case(Unreached(), batch(32))


def _half() -> Case:
    return Case(clean().half())


def _bfloat16_eval() -> Case:
    return Case(clean().eval().to(torch.bfloat16))  # updates once train() is called


def _weights_only_average_eval() -> Case:
    return Case(weight_only_average().eval())


def _weights_only_average_train() -> Case:
    return Case(weight_only_average().train())


def _averaged_model() -> Case:
    source = nn.Sequential(nn.Linear(4, 4, bias=False), nn.BatchNorm1d(4, affine=False))
    averaged = AveragedModel(source)
    averaged.update_parameters(source)  # weights averaged, the source never ran a batch
    return Case(averaged.eval())


def _checkpointed_train() -> Case:
    return Case(Checkpointed(reentrant=False).train(), batch(32))


def _checkpointed_eval() -> Case:
    return Case(Checkpointed(reentrant=True).eval(), batch(32).requires_grad_())


def _eval_loop() -> Case:
    return Case(clean().train(), batch(32), grad=False)


# kind -> [(builder, expected severity, expected layers)]
TRIGGERS: dict[str, list[tuple[Callable[[], Case], Severity, tuple[str, ...]]]] = {
    "stats_drift_with_frozen_affine": [(_drift_train, W, ("1",)), (_drift_eval, INFO, ("4",))],
    "no_update_but_batch_stats": [(_momentum_zero, W, ("4",)), (_no_tracking_after, INFO, ("9",))],
    "stale_running_stats": [
        (_stale_eval, E, ("1", "4", "9")),
        (_stale_frozen, E, ("1",)),
        (_stale_unreached, W, ("aux.1",)),
    ],
    "tensorflow_momentum": [(_tf_momentum, W, ("4",)), (_tf_momentum_frozen, INFO, ("9",))],
    "batch_stats_in_eval": [(_batch_stats_native, W, ("4",)), (_batch_stats_managed, INFO, ("9",))],
    "nonfinite_running_stats": [(_nan, E, ("4",)), (_negative, E, ("1",)), (_zero_var, W, ("9",))],
    "unmanaged_mixed_phase": [
        (_mixed_eval_in_train, W, ("1", "4")),
        (_mixed_train_in_eval, W, ("9",)),
    ],
    "tiny_batch": [(_tiny, W, ("9",)), (_one_value, E, ("9",))],
    "domain_shift": [(_shift_train, W, ("1",)), (_shift_eval, W, ("1", "4", "9"))],
    "shared_layer": [(_shared, W, ("bn",)), (_shared_frozen, INFO, ("bn",))],
    "conv_bias_before_bn": [(_conv_bias, INFO, ("1", "4", "9"))],
    "frozen_param_in_optimizer": [
        (_frozen_in_optimizer, INFO, ("4",)),
        (_frozen_with_grad, W, ("9",)),
    ],
    "trainable_bn_not_in_optimizer": [(_not_in_optimizer, W, ("4", "9"))],
    "bn_weight_decay": [(_weight_decay, INFO, ("1", "4", "9"))],
    "half_precision_running_stats": [
        (_half, W, ("1", "4", "9")),
        (_bfloat16_eval, INFO, ("1", "4", "9")),
    ],
    "weights_without_stats": [
        (_weights_only_average_eval, E, ("1", "4", "9")),
        (_weights_only_average_train, W, ("1", "4", "9")),
        (_averaged_model, E, ("module.1",)),
    ],
    "double_update": [
        (_checkpointed_train, W, ("body.1", "body.4")),
        (_checkpointed_eval, INFO, ("body.1", "body.4")),
    ],
    "updates_in_eval_loop": [(_eval_loop, W, ("1", "4", "9"))],
}
CASES = [
    pytest.param(kind, build, sev, layers, id=f"{kind}-{build.__name__.strip('_')}")
    for kind, items in TRIGGERS.items()
    for build, sev, layers in items
]


def test_every_kind_has_a_trigger() -> None:
    assert set(TRIGGERS) == set(kinds())
    assert len(kinds()) == len(set(kinds())) == 18


@pytest.mark.parametrize(("kind", "build", "severity", "layers"), CASES)
def test_kind_fires_on_its_trigger(
    kind: str, build: Callable[[], Case], severity: Severity, layers: tuple[str, ...]
) -> None:
    case = build()
    with torch.set_grad_enabled(case.grad):
        found = bnkit.check(case.model, case.example, case.optimizer)
    found = [f for f in found if f.kind == kind]
    assert len(found) == 1, found
    f = found[0]
    assert f.severity is severity
    assert sorted(f.layers) == sorted(layers)
    assert f.what and f.why and f.fix
    assert kind in str(f) and f.to_dict()["severity"] == severity.value


@pytest.mark.parametrize("training", [True, False])
def test_clean_model_is_silent(training: bool) -> None:
    model = clean().train(training)
    opt = no_decay_optimizer(model)
    assert bnkit.check(model, batch(32, seed=7), opt) == []
    assert bnkit.check(model) == []


@pytest.mark.parametrize(
    "policy", ["frozen", "frozen_stats", "frozen_affine", "adapt", bnkit.Policy(update="never")]
)
@pytest.mark.parametrize("training", [True, False])
def test_intended_policies_are_silent(policy: bnkit.Policy | str, training: bool) -> None:
    """A policy says what the user meant: eval layers in a train model, frozen gamma/beta…"""
    model = clean().train(training)
    bnkit.apply(model, policy, where="4")
    model[4].train(not training)  # the layer's own phase no longer decides anything...
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    found = {f.kind for f in bnkit.check(model, batch(32, seed=7), opt)}
    phase_dependent = bnkit.policy_of(model[4]).describe(True) != bnkit.policy_of(
        model[4]
    ).describe(False)
    # ...except for policies whose behaviour still depends on the phase.
    assert found == ({"unmanaged_mixed_phase"} if phase_dependent else set())


def test_stale_statistics_in_train_are_fine_until_used() -> None:
    # A fresh model in train() normalizes with batch statistics and will update them.
    assert bnkit.check(cnn().train()) == []


def test_batch_of_one_in_eval_is_fine() -> None:
    assert [f.kind for f in bnkit.check(clean().eval(), batch(1))] == []


def test_domain_shift_threshold_and_sample_guard() -> None:
    model, shifted = clean(), batch(32, shift=2.0, scale=3.0)
    assert bnkit.check(model, shifted, domain_threshold=1e6) == []
    # fewer than 16 samples: too noisy to call a shift
    assert "domain_shift" not in {f.kind for f in bnkit.check(model, shifted[:12])}
    mild = bnkit.check(model, batch(32, shift=0.3), domain_threshold=0.01)
    assert [f.kind for f in mild] == ["domain_shift"]


def test_conv_bias_follows_data_flow_and_skips_inplace() -> None:
    class Net(nn.Module):
        def __init__(self, inplace: bool) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(4)  # registered before the conv: no Sequential order
            self.conv = nn.Conv2d(3, 4, 3)
            self.act = nn.ReLU(inplace=inplace) if inplace else nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(self.act(y) if isinstance(self.act, nn.ReLU) else y)

    plain = Net(inplace=False)
    assert bnkit.check(plain) == []  # no input: only Sequential neighbours are certain
    found = bnkit.check(plain, batch(8))
    assert [(f.kind, f.layers) for f in found] == [("conv_bias_before_bn", ("bn",))]
    assert "'conv' → 'bn'" in found[0].what
    # an in-place ReLU between them changes the tensor: the bias is not redundant
    assert bnkit.check(Net(inplace=True), batch(8)) == []


def test_findings_are_sorted_errors_first() -> None:
    model = cnn(bias=True).eval()
    model[1].running_var[0] = float("nan")
    severities = [f.severity for f in bnkit.check(model)]
    assert severities == sorted(severities, key=[E, W, INFO].index)
    assert severities[0] is E and severities[-1] is INFO


def test_ignore_and_bad_settings() -> None:
    model = cnn().eval()
    assert bnkit.check(model, ignore=["stale_running_stats"]) == []
    with pytest.raises(bnkit.errors.DiagnosticError, match="unknown finding kind 'stale'"):
        bnkit.check(model, ignore=["stale"])
    with pytest.raises(bnkit.errors.DiagnosticError, match="domain_threshold"):
        bnkit.check(model, domain_threshold=0)
    with pytest.raises(bnkit.errors.DiagnosticError, match="min_values_per_channel"):
        bnkit.check(model, min_values_per_channel=1)
    with pytest.raises(bnkit.errors.DiagnosticError, match="param_groups"):
        bnkit.check(model, optimizer=object())


def test_several_optimizers_and_wrappers() -> None:
    model = clean()
    head = torch.optim.SGD(model[8:].parameters(), lr=0.1)
    body = torch.optim.SGD(model[:8].parameters(), lr=0.1)
    assert bnkit.check(model, optimizer=[head, body]) == []
    found = bnkit.check(model, optimizer=[head])
    assert [(f.kind, f.layers) for f in found] == [("trainable_bn_not_in_optimizer", ("1", "4"))]


def test_fix_for_many_layers_refers_to_the_finding() -> None:
    model = nn.Sequential(*[nn.BatchNorm1d(2) for _ in range(6)]).train()
    for m in list(model)[:5]:
        m.requires_grad_(False)
        m.running_var.fill_(2.0)  # statistics worth freezing
    (f,) = bnkit.check(model)
    assert f.kind == "stats_drift_with_frozen_affine" and len(f.layers) == 5
    assert "where=lambda name, _: name in set(finding.layers)" in f.fix
    namespace = {"bnkit": bnkit, "model": model, "finding": f}
    exec(f.fix.split(" fixes")[0], namespace)  # the fix is runnable as written
    assert bnkit.policy_of(model[0]) == bnkit.preset("frozen")
    assert bnkit.check(model) == []


def test_stale_statistics_the_example_forward_never_reached_are_not_an_error() -> None:
    """Regression: a layer the example forward never reached was an error like a used one."""
    (found,) = bnkit.check(Unreached(), batch(32))
    assert found.severity is W and "the example forward did not reach them" in found.what
    (without_input,) = bnkit.check(Unreached())  # nothing says it is unused: an error
    assert without_input.severity is E and without_input.layers == ("aux.1",)


def test_tensorflow_momentum_gives_the_pytorch_value_and_keeps_keras_eps() -> None:
    model = clean()
    for i in (1, 4):
        model[i].momentum, model[i].eps = 0.997, 1e-3
    (found,) = bnkit.check(model)
    assert found.kind == "tensorflow_momentum" and found.layers == ("1", "4")
    assert "their running statistics are 99.7% the last batch" in found.what
    assert "averages over about 333 batches" in found.what
    assert "eps 1e-3 is Keras's default too, and right to keep" in found.why
    assert found.fix == (
        "use the PyTorch value 1 - 0.997 = 0.003: set layer.momentum = 0.003 on these layers, or "
        "bnkit.apply(model, bnkit.preset('pytorch', momentum=0.003), "
        "where=lambda name, _: name in {'1', '4'})"
    )
    model[9].momentum = 0.5  # ambiguous: PyTorch's convention is not ruled out
    assert [f.layers for f in bnkit.check(model)] == [("1", "4")]


def test_check_report_and_watch_refuse_what_is_not_a_module() -> None:
    """Regression: a non-Module gave an AttributeError."""
    for call in (bnkit.check, bnkit.report, bnkit.watch):
        with pytest.raises(
            bnkit.errors.DiagnosticError, match=r"expects a torch\.nn\.Module \(got list\)"
        ):
            call([nn.BatchNorm1d(2)])  # type: ignore[arg-type]
