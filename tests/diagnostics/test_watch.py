"""bnkit.watch on real training and evaluation loops."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from tests.diagnostics.models import batch, clean

import bnkit


def hooks(model: nn.Module) -> int:
    count = 0
    for m in model.modules():
        count += len(m._forward_pre_hooks) + len(m._forward_hooks)
    for p in model.parameters():
        count += len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
    return count


def train(model: nn.Module, steps: int, opt: torch.optim.Optimizer) -> None:
    g = torch.Generator().manual_seed(5)
    for i in range(steps):
        x = batch(16, seed=i)
        target = torch.randint(0, 6, (16,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), target).backward()
        opt.step()


def test_training_loop_with_a_frozen_backbone() -> None:
    model = clean()
    bnkit.freeze(model, where=lambda name, _: name in {"1", "4"})
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    nbt = int(model[9].num_batches_tracked)
    with bnkit.watch(model) as w:
        train(model, 4, opt)
        assert w.changed() == ["9"]  # also inside the block
    assert w.steps == 4 and len(w.records) == 12
    assert w.changed() == ["9"]
    assert int(model[9].num_batches_tracked) == nbt + 4
    by_layer = {name: [r for r in w.records if r.layer == name] for name in ("1", "4", "9")}
    for r in by_layer["1"] + by_layer["4"]:
        assert (r.used, r.calls, r.batches, r.grad, r.affine_change) == ("running", 1, 0, False, 0)
        assert r.mean_change == 0 and r.var_change == 0 and r.drift == 0
    for i, r in enumerate(by_layer["9"]):
        assert (r.step, r.used, r.calls, r.batches, r.grad) == (i, "batch", 1, 1, True)
        assert r.mean_change and r.mean_change > 0 and r.affine_change > 0
    drifts = [r.drift for r in by_layer["9"]]
    assert drifts[0] and drifts[-1] and drifts[-1] > drifts[0]

    with bnkit.watch(model, where=lambda name, _: name in {"1", "4"}) as frozen:
        train(model, 2, opt)
    frozen.assert_frozen()
    frozen.assert_unchanged()
    with pytest.raises(AssertionError, match=r"'9': running_mean moved .*num_batches_tracked \+4"):
        w.assert_unchanged()
    with pytest.raises(AssertionError, match=r"'9': .*gamma/beta received gradients in 4 of 4"):
        w.assert_frozen()


def test_requires_grad_false_alone_is_not_frozen() -> None:
    model = clean()
    model.requires_grad_(False)
    with bnkit.watch(model) as w:
        model(batch(16))
    with pytest.raises(AssertionError) as info:
        w.assert_frozen()
    message = str(info.value)
    assert all(f"'{n}': running_mean moved" in message for n in ("1", "4", "9"))
    assert "gradient" not in message


def test_evaluation_changes_nothing_and_statistics_used() -> None:
    model = clean().eval()
    before = hooks(model)
    with bnkit.watch(model) as w, torch.no_grad():
        for i in range(3):
            model(batch(8, seed=i))
    w.assert_unchanged()
    w.assert_frozen()
    assert {r.used for r in w.records} == {"running"} and w.changed() == []
    assert hooks(model) == before


def test_every_aggregates_steps() -> None:
    model = clean()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with bnkit.watch(model, every=3, where="9") as w:
        train(model, 7, opt)
    assert [r.step for r in w.records] == [2, 5, 6]
    assert [r.batches for r in w.records] == [3, 3, 1]
    assert [r.calls for r in w.records] == [3, 3, 1]
    with pytest.raises(bnkit.errors.DiagnosticError, match="every must be a positive integer"):
        bnkit.watch(model, every=0)


def test_shared_layer_and_direct_calls_are_counted() -> None:
    bn = nn.BatchNorm1d(4)
    model = nn.Sequential(nn.Linear(4, 4), bn, nn.ReLU(), nn.Linear(4, 4), bn)
    with bnkit.watch(model) as w:
        model(torch.randn(8, 4))
        bn(torch.randn(8, 4))  # outside a forward of the model: counted in the current step
    (r,) = w.records
    assert (r.calls, r.batches, r.used) == (3, 3, "batch")


def test_hooks_removed_on_exception() -> None:
    model = clean()
    before = hooks(model)
    w = bnkit.watch(model)
    try:
        with w:
            model(batch(16)).sum().backward()
            assert hooks(model) > before
            raise ZeroDivisionError
    except ZeroDivisionError:
        pass
    assert hooks(model) == before
    assert w.steps == 1 and len(w.records) == 3  # the step before the error is recorded


class FakeWriter:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []
        self.flushed = False

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def flush(self) -> None:
        self.flushed = True


def test_tensorboard_scalars(tmp_path: Path) -> None:
    model = clean()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    fake = FakeWriter()
    with bnkit.watch(model, writer=fake, where="9"):
        train(model, 2, opt)
    tags = {(tag, step) for tag, _, step in fake.scalars}
    assert ("bnkit/9/mean_change", 1) in tags and ("bnkit/9/drift", 0) in tags
    assert ("bnkit/9/batches", 1.0, 1) in {(t, v, s) for t, v, s in fake.scalars}
    assert fake.flushed
    with bnkit.watch(model, writer=tmp_path / "runs"):
        train(model, 1, opt)
    assert list((tmp_path / "runs").glob("events.out.tfevents.*"))
    with pytest.raises(bnkit.errors.DiagnosticError, match="writer must be"):
        bnkit.watch(model, writer=3).__enter__()


def test_plot_writes_a_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    model = clean()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with bnkit.watch(model) as w:
        train(model, 3, opt)
    w.plot(tmp_path / "drift.png")
    assert (tmp_path / "drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = bnkit.watch(model)
    with pytest.raises(bnkit.errors.DiagnosticError, match="nothing to plot"):
        empty.plot(tmp_path / "none.png")


@pytest.mark.parametrize(
    ("module", "call"),
    [
        ("matplotlib.backends.backend_agg", lambda w, tmp: w.plot(tmp / "x.png")),
        ("torch.utils.tensorboard", lambda w, tmp: bnkit.watch(w.model, writer=tmp).__enter__()),
    ],
)
def test_missing_optional_dependency(
    module: str, call: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = clean()
    with bnkit.watch(model) as w:
        model(batch(16))
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(bnkit.errors.MissingDependencyError, match=r"pip install 'bnkit\[watch\]'"):
        call(w, tmp_path)


def test_summary_table() -> None:
    model = clean()
    bnkit.apply(model, "frozen_stats", where="1")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with bnkit.watch(model) as w:
        train(model, 2, opt)
    table = w.summary()
    rows = {r["layer"]: r for r in table.rows}
    assert rows["1"]["normalized with"] == "running" and rows["1"]["batches"] == "+0"
    assert rows["1"]["gamma/beta grad"] == "2/2 records"  # frozen_stats: gamma/beta still learn
    assert rows["4"]["normalized with"] == "batch" and rows["4"]["batches"] == "+2"
    assert str(table).startswith("bnkit.watch: 2 steps of Sequential")
    assert table.to_dict()["rows"] == table.rows


def test_layers_without_statistics_or_affine_and_reentry() -> None:
    model = nn.Sequential(
        nn.Linear(4, 4, bias=False),
        nn.BatchNorm1d(4, affine=False),
        nn.BatchNorm1d(4, track_running_stats=False),
    )
    w = bnkit.watch(model)
    with w:
        model(torch.randn(8, 4)).sum().backward()
    plain, untracked = w.records
    assert plain.batches == 1 and plain.mean_change and plain.affine_change == 0
    assert not plain.grad  # no gamma/beta to receive one
    assert untracked.mean_change is None and untracked.drift is None and untracked.batches == 0
    assert (untracked.used, untracked.calls) == ("batch", 1)
    assert w.changed() == ["1"]
    with pytest.raises(bnkit.errors.DiagnosticError, match=r"start a new bnkit\.watch"), w:
        pass


def test_watch_on_layers_without_running_statistics() -> None:
    """Regression: watch() raised NotImplementedError on layers without running statistics."""
    model = nn.Sequential(
        nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.BatchNorm1d(4)
    )
    with bnkit.watch(model, where="1") as only_stateless:
        model(torch.randn(8, 4)).sum().backward()
    (record,) = only_stateless.records
    assert record.calls == 1 and record.used == "batch" and record.grad
    assert record.mean_change is None and record.drift is None and record.batches == 0
    assert only_stateless.changed() == []
    only_stateless.assert_unchanged()  # nothing kept, so nothing moved
    row = only_stateless.summary().rows[0]
    assert row["max |Δ mean|"] == row["drift"] == "no running stats"
    with pytest.raises(
        bnkit.errors.DiagnosticError, match="no watched layer keeps running statistics"
    ):
        only_stateless.plot("unused.png")
    with bnkit.watch(model) as both:
        model(torch.randn(8, 4))
    assert both.changed() == ["2"]
