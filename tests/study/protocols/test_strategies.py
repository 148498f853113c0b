"""What each strategy does to the model, checked against native PyTorch where it has one."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import bnkit
from bnkit import bn_layers
from bnkit.study.models.resnet import build_model
from bnkit.study.protocols.finetune import FineTuneContext, finetune
from bnkit.study.protocols.test_time import TEST_TIME, StreamContext


def source_model() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("bn", width=4)
    model.train()
    with torch.no_grad():  # running statistics of some "source" data
        for _ in range(5):
            model(torch.rand(32, 1, 8, 8))
    return model.eval()


def context(**changes: object) -> StreamContext:
    torch.manual_seed(1)
    values: dict[str, object] = {
        "pool": torch.rand(40, 1, 8, 8) * 0.5 + 0.3,
        "stream": torch.rand(23, 1, 8, 8) * 0.5 + 0.3,
        "batch_size": 4,
        "n": None,
        "prior_strength": 16.0,
        "adapt_momentum": 0.01,
        "tent_lr": 1e-3,
        "reset_every": 2,
    }
    values.update(changes)
    return StreamContext(**values)  # type: ignore[arg-type]


def run(name: str, ctx: StreamContext, model: nn.Module | None = None) -> torch.Tensor:
    out = TEST_TIME[name].fn(model if model is not None else source_model(), ctx)
    assert isinstance(out, torch.Tensor)
    return out


def test_source_is_the_plain_eval_forward() -> None:
    ctx = context()
    with torch.no_grad():
        want = source_model()(ctx.stream)
    torch.testing.assert_close(run("source", ctx), want)


@pytest.mark.parametrize("batch_size", [1, 4, 23, 64])
def test_test_batch_normalizes_each_batch_by_itself_as_train_mode_pytorch(batch_size: int) -> None:
    ctx = context(batch_size=batch_size)
    native = source_model().train()
    with torch.no_grad():
        want = torch.cat([native(b) for b in ctx.stream.split(batch_size)])
    torch.testing.assert_close(run("test_batch", ctx), want)


def test_adabn_uses_the_first_n_pool_images() -> None:
    ctx = context(n=16)
    model = source_model()
    out = run("adabn", ctx, model)
    stem_bn = model.stem[1]
    with torch.no_grad():
        conv = model.stem[0](ctx.pool[:16])
    torch.testing.assert_close(stem_bn.running_mean, conv.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(stem_bn.running_var, conv.var(dim=(0, 2, 3), unbiased=True))
    assert not torch.equal(out, run("adabn", context(n=None)))


def test_prior_lies_between_source_and_test_batch_statistics() -> None:
    ctx = context(batch_size=1)
    strong = run("prior", context(batch_size=1, prior_strength=1e9))
    torch.testing.assert_close(strong, run("source", ctx), atol=1e-3, rtol=1e-3)
    weak = run("prior", context(batch_size=1, prior_strength=0.0))
    torch.testing.assert_close(weak, run("test_batch", ctx))


def test_adapt_normalizes_the_first_batch_with_the_source_statistics_then_follows() -> None:
    ctx = context(batch_size=5, adapt_momentum=0.5)
    src, adapted = run("source", ctx), run("adapt", ctx)
    torch.testing.assert_close(adapted[:5], src[:5])
    assert not torch.allclose(adapted[5:], src[5:])
    order = torch.arange(23).flip(0)
    flipped = run("adapt", context(batch_size=5, adapt_momentum=0.5, stream=ctx.stream[order]))
    assert not torch.allclose(flipped[order][5:], adapted[5:])  # the stream order matters


def test_tent_learns_along_the_stream_and_the_long_arm_is_tent_on_a_long_stream() -> None:
    ctx = context(batch_size=8, tent_lr=1e-2)
    tent, long = run("tent", ctx), run("tent_long", ctx)
    torch.testing.assert_close(tent, long)
    torch.testing.assert_close(tent[:8], run("test_batch", context(batch_size=8))[:8])
    assert not torch.allclose(tent[8:], run("test_batch", context(batch_size=8))[8:])


def test_tent_reset_returns_to_the_source_model_every_reset_every_batches() -> None:
    stream = torch.rand(6, 1, 8, 8).repeat(3, 1, 1, 1)  # the same 6 images three times
    ctx = context(batch_size=3, tent_lr=5e-2, reset_every=2, stream=stream)
    reset, plain = run("tent_reset", ctx), run("tent", ctx)
    torch.testing.assert_close(reset[6:12], reset[:6])  # after a reset: the same outputs
    torch.testing.assert_close(reset[:6], plain[:6])
    assert not torch.allclose(plain[6:12], plain[:6])  # without one, TENT moved on


def finetune_context(batch_size: int = 8, lr: float = 0.05) -> FineTuneContext:
    torch.manual_seed(2)
    return FineTuneContext(
        x=torch.rand(20, 1, 8, 8),
        y=torch.randint(0, 10, (20,)),
        pool=torch.rand(40, 1, 8, 8),
        val_x=torch.rand(12, 1, 8, 8),
        val_y=torch.randint(0, 10, (12,)),
        batch_size=batch_size,
        steps=4,
        warmup=1,
        lr=lr,
        curve_points=3,
        ghost_size=4,
        generator=torch.Generator().manual_seed(0),
    )


def finetuned(name: str, batch_size: int = 8, lr: float = 0.05) -> tuple[nn.Module, nn.Module]:
    before = source_model()
    model = copy.deepcopy(before)
    curve = finetune(model, name, finetune_context(batch_size, lr))
    assert len(curve) == 3 and all(0 <= c <= 1 for c in curve)
    assert not model.training
    return before, model


def changed(before: nn.Module, after: nn.Module) -> set[str]:
    a, b = before.state_dict(), after.state_dict()
    return {k for k in a if not torch.equal(a[k], b[k])}


def kinds(names: set[str]) -> set[str]:
    """ "conv"/"head" weights, BN "affine", BN "stats" among changed state names."""
    out = set()
    for n in names:
        if "running" in n or "num_batches" in n:
            out.add("stats")
        elif ("norm" in n or "stem.1" in n or "shortcut.1" in n) and n.split(".")[-1] in (
            "weight",
            "bias",
        ):
            out.add("affine")
        elif n.startswith("head"):
            out.add("head")
        else:
            out.add("conv")
    return out


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("pytorch", {"conv", "head", "affine", "stats"}),
        ("frozen_affine", {"conv", "head", "stats"}),
        ("frozen_stats", {"conv", "head", "affine"}),
        ("frozen", {"conv", "head"}),
        ("bn_only", {"affine", "stats"}),
        ("renorm", {"conv", "head", "affine", "stats"}),
        ("ghost", {"conv", "head", "affine", "stats"}),
    ],
)
def test_each_finetuning_strategy_trains_what_it_says(name: str, want: set[str]) -> None:
    before, after = finetuned(name)
    assert kinds(changed(before, after)) == want


def test_adabn_finetune_recalibrates_on_the_pool_then_keeps_those_statistics() -> None:
    before, after = finetuned("adabn_finetune")
    assert kinds(changed(before, after)) == {"conv", "head", "affine", "stats"}
    recal = copy.deepcopy(before)
    bnkit.recalibrate(recal, finetune_context().pool.split(64), progress=False)
    for (_, a), (_, b) in zip(bn_layers(recal), bn_layers(after), strict=True):
        torch.testing.assert_close(a.running_mean, b.running_mean)


def test_ghost_at_a_batch_no_larger_than_the_ghost_is_plain_batchnorm() -> None:
    _, ghost = finetuned("ghost", batch_size=4)
    _, plain = finetuned("pytorch", batch_size=4)
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(ghost.state_dict()[key], value)


def test_the_curve_starts_before_training_and_ends_at_the_final_model() -> None:
    model = source_model()
    ctx = finetune_context()
    with torch.no_grad():
        start = float((model.eval()(ctx.val_x).argmax(1) == ctx.val_y).double().mean())
    curve = finetune(model, "pytorch", ctx)
    with torch.no_grad():
        end = float((model.eval()(ctx.val_x).argmax(1) == ctx.val_y).double().mean())
    assert curve[0] == pytest.approx(start) and curve[-1] == pytest.approx(end)
