"""Bad inputs and safety: clear errors naming the layer; running statistics never poisoned."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from tests.helpers import randomize

import bnkit
from bnkit.errors import InputError, NonFiniteBatchWarning


def managed(preset: str = "pytorch", layer: nn.Module | None = None) -> nn.Module:
    model = nn.Sequential(nn.Identity(), randomize(layer or nn.BatchNorm2d(4)))
    bnkit.apply(model, preset)
    return model


def state(model: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for b in model.buffers()]


def test_wrong_number_of_dims_names_the_layer_and_the_fix() -> None:
    model = managed()
    with pytest.raises(
        InputError,
        match=r"layer '1' expected 4D input \(got 3D input\); use BatchNorm1d for \(N, C, L\)",
    ):
        model(torch.randn(2, 4, 5))


@pytest.mark.parametrize(
    ("cls", "shape", "hint"),
    [
        (nn.BatchNorm2d, (2, 4, 3, 3, 3), r"use BatchNorm3d for \(N, C, D, H, W\)"),
        (nn.BatchNorm3d, (2, 4, 3, 3), r"use BatchNorm2d for \(N, C, H, W\)"),
        (nn.BatchNorm2d, (2, 4), r"use BatchNorm1d for \(N, C\)"),
    ],
)
def test_the_fix_names_the_class_and_layout_for_the_inputs_rank(
    cls: type[nn.modules.batchnorm._BatchNorm], shape: tuple[int, ...], hint: str
) -> None:
    layer = bnkit.apply(cls(4), "pytorch")
    with pytest.raises(InputError, match=hint):
        layer(torch.randn(shape))


@pytest.mark.parametrize(
    ("cls", "shape", "expected"),
    [
        (nn.BatchNorm1d, (2, 4, 2, 2), "2D or 3D"),
        (nn.BatchNorm2d, (2, 4, 2, 2, 2), "4D"),
        (nn.BatchNorm3d, (2, 4, 2, 2, 2, 2), "5D"),
        (nn.BatchNorm3d, (2, 4, 2, 2), "5D"),
    ],
)
def test_each_class_accepts_only_its_own_ranks(
    cls: type[nn.modules.batchnorm._BatchNorm], shape: tuple[int, ...], expected: str
) -> None:
    # the native kernel would run any rank from 2 up: the check is bnkit's
    layer = bnkit.apply(cls(4), "pytorch")
    with pytest.raises(InputError, match=f"expected {expected} input"):
        layer(torch.randn(shape))


def test_sync_batchnorm_takes_every_rank_from_2_up_as_pytorch_does() -> None:
    layer = bnkit.apply(nn.SyncBatchNorm(2), "pytorch").eval()
    x = torch.randn([2, 2] + [1] * 63)  # 65 dimensions
    assert torch.equal(layer(x), nn.SyncBatchNorm(2).eval()(x))
    with pytest.raises(InputError, match=r"expected at least 2D input \(got 1D input\)"):
        layer(torch.randn(2))


def test_channel_mismatch() -> None:
    model = managed()
    with pytest.raises(InputError, match=r"layer '1' expected 4 channels in dim 1 \(got 3"):
        model(torch.randn(2, 3, 5, 5))


@pytest.mark.parametrize("preset", ["pytorch", "batch_stats", "adapt"])
def test_one_value_per_channel_where_batch_statistics_are_needed(preset: str) -> None:
    model = managed(preset, nn.BatchNorm1d(4)).train()
    with pytest.raises(InputError, match=r"needs more than 1 value per channel.*\(1, 4\)"):
        model(torch.randn(1, 4))


def test_one_value_per_channel_is_fine_with_running_statistics() -> None:
    model = managed("frozen", nn.BatchNorm1d(4)).train()
    assert model(torch.randn(1, 4)).shape == (1, 4)


def test_errors_leave_buffers_exactly_as_they_were() -> None:
    model = managed().train()
    before = state(model)
    for bad in (torch.randn(2, 3, 5, 5), torch.randn(2, 4, 5), torch.randn(1, 4, 1, 1)):
        with pytest.raises(InputError):
            model(bad)
    assert all(torch.equal(a, b) for a, b in zip(before, state(model), strict=True))
    # plain PyTorch counts the failed batch in num_batches_tracked; bnkit does not
    native = randomize(nn.BatchNorm2d(4)).train()
    with pytest.raises(RuntimeError):
        native(torch.randn(2, 3, 5, 5))
    assert int(native.num_batches_tracked) == 4


@pytest.mark.parametrize("policy", ["pytorch", "adapt", bnkit.Policy(update="cumulative")])
def test_nonfinite_batch_never_poisons_running_statistics(policy: str | bnkit.Policy) -> None:
    model = managed().train()
    bnkit.apply(model, policy)
    before = state(model)
    x = torch.randn(3, 4, 5, 5)
    x[1, 2, 3, 3] = float("nan")
    x[0, 0, 0, 0] = float("inf")
    with pytest.warns(NonFiniteBatchWarning, match="layer '1': the batch has NaN/Inf"):
        model(x)
    assert all(torch.equal(a, b) for a, b in zip(before, state(model), strict=True))
    model(torch.randn(3, 4, 5, 5))  # a finite batch updates again
    assert not torch.equal(before[0], state(model)[0])


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(bnkit.PolicyError, match="known presets: 'pytorch', 'frozen'"):
        bnkit.apply(nn.BatchNorm2d(2), "eval")


def test_layers_without_running_stats_refuse_policies_that_need_them() -> None:
    layer = nn.BatchNorm2d(2, track_running_stats=False)
    with pytest.raises(bnkit.LayerError, match="use 'batch_stats', or rebuild the layer"):
        bnkit.apply(layer, "adapt")
    bnkit.apply(layer, "batch_stats")
    assert layer(torch.randn(2, 2, 3, 3)).shape == (2, 2, 3, 3)


@pytest.mark.parametrize("sync_free", [False, True], ids=["host-check", "device-select"])
@pytest.mark.parametrize("preset", ["pytorch", "adapt"])
def test_nonfinite_guard_keeps_backward_working(
    preset: str, sync_free: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The device-select path is what accelerators and torch.compile run; force it on CPU.
    from bnkit.layers import update

    monkeypatch.setattr(update, "sync_free", lambda t: sync_free)
    model = managed(preset).train()
    before = state(model)
    x = torch.randn(3, 4, 5, 5)
    x[0, 1, 0, 0] = float("nan")
    x.requires_grad_(True)
    if sync_free:
        y = model(x)  # silent: no host synchronization to warn from
    else:
        with pytest.warns(NonFiniteBatchWarning):
            y = model(x)
    y.sum().backward()
    assert x.grad is not None
    assert all(torch.equal(a, b) for a, b in zip(before, state(model), strict=True))


@pytest.mark.parametrize(
    "call",
    [
        lambda m: bnkit.apply(m, "frozen"),
        lambda m: bnkit.freeze(m),
        lambda m: bnkit.check(m),
        lambda m: bnkit.report(m),
        lambda m: bnkit.fuse(m),
        lambda m: bnkit.capture_stats(m),
        lambda m: bnkit.recalibrate(m, [torch.randn(2, 3)], progress=False),
        lambda m: bnkit.synchronize(m),
        lambda m: bnkit.to_frozen(m),
        lambda m: bnkit.average_stats(m, nn.BatchNorm1d(3), decay=0.9).__enter__(),
        lambda m: bnkit.distribute_stats(m),
    ],
)
def test_something_that_is_not_a_module_gets_a_clear_error(call: object) -> None:
    with pytest.raises(bnkit.BNKitError, match=r"expect(s|ed) a torch\.nn\.Module"):
        call([nn.BatchNorm1d(3)])  # type: ignore[operator]


def test_preset_names_and_registrations_of_the_wrong_type() -> None:
    with pytest.raises(bnkit.PolicyError, match=r"a preset name is a string .got list"):
        bnkit.preset(["frozen"])  # type: ignore[arg-type]
    with pytest.raises(bnkit.PolicyError, match=r"needs a bnkit\.Policy .got str 'frozen'"):
        bnkit.register_preset("mine", "frozen")  # type: ignore[arg-type]
    with pytest.raises(bnkit.PolicyError, match=r"expected a bnkit\.Policy or a preset name"):
        bnkit.apply(nn.BatchNorm1d(2), 3)  # type: ignore[arg-type]
    assert "mine" not in bnkit.presets()


@pytest.mark.parametrize("bad", ["gamma_only", "lazy"])
def test_synchronize_checks_every_layer_before_changing_any(bad: str) -> None:
    model = nn.Sequential(nn.BatchNorm1d(3), nn.BatchNorm1d(3))
    if bad == "gamma_only":
        model[1].weight.requires_grad_(False)
    else:
        model[1] = nn.LazyBatchNorm1d()
    with pytest.raises(bnkit.LayerError):
        bnkit.synchronize(model)
    assert type(model[0]) is nn.BatchNorm1d and not bnkit.distributed.is_synchronized(model[0])
