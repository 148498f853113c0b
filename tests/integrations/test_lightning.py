"""BatchNormPolicy with the real Lightning Trainer (CPU, tiny model, a few steps): the policy
holds through Lightning's train()/eval() switches, the watch numbers reach the logger, and the
fit ends with a recalibration or a restore when asked."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn as nn
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, TensorDataset

import bnkit
from bnkit.integrations.lightning import BatchNormPolicy


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Lightning's advice (workers, log intervals) and its use of a torch API torch deprecates."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"lightning\.")
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        yield


STEPS = 3  # training batches per epoch


class Net(pl.LightningModule):
    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(8, 4, bias=False), nn.BatchNorm1d(4))
        with torch.no_grad():  # statistics worth keeping: a "pretrained" backbone
            self.backbone[1].running_mean.uniform_(-1, 1)
            self.backbone[1].running_var.uniform_(0.5, 2)
        self.fail_at = fail_at
        self.phases: list[tuple[str, bool, str]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.backbone(x))
        return out

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if batch_idx == self.fail_at:
            raise RuntimeError("bad batch")
        self.phases.append(
            ("train", self.backbone[1].training, repr(bnkit.policy_of(self.backbone[1])))
        )
        return self(batch[0]).square().mean()

    def on_validation_model_train(self) -> None:
        # what Lightning before 2.2 did after every validation loop (and what overriding this
        # hook with super() does): model.train() on the whole model
        super().on_validation_model_train()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.phases.append(
            ("val", self.backbone[1].training, repr(bnkit.policy_of(self.backbone[1])))
        )
        self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(trainable, lr=0.1)


class Recorder(Logger):
    """An in-memory logger: every ``log_metrics`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((int(step or 0), dict(metrics)))


def _data(seed: int = 1) -> DataLoader[Any]:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(48, 4, generator=g) * 2 + 1), batch_size=16)


def _fit(
    model: Net, callback: BatchNormPolicy, tmp: Path, logger: Logger | bool = False
) -> pl.Trainer:
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=STEPS,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=logger,
        log_every_n_steps=1,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp,
        accelerator="cpu",
        devices=1,
    )
    with _quiet():
        trainer.fit(model, _data(), _data(2))
    return trainer


def _stats(layer: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for t in (layer.running_mean, layer.running_var, layer.num_batches_tracked)]


def test_the_policy_survives_lightnings_phase_switches(tmp_path: Path) -> None:
    model = Net()
    before, gamma = _stats(model.backbone[1]), model.backbone[1].weight.clone()
    _fit(model, BatchNormPolicy("frozen", where="backbone"), tmp_path)
    assert {(p, training) for p, training, _ in model.phases} == {("train", True), ("val", False)}
    assert {policy for _, _, policy in model.phases} == {"bnkit.preset('frozen')"}
    for got, expected in zip(_stats(model.backbone[1]), before, strict=True):
        assert torch.equal(got, expected)
    assert torch.equal(model.backbone[1].weight, gamma)
    assert int(model.head[1].num_batches_tracked) == 2 * STEPS  # the head trains as usual


def test_without_a_policy_bn_eval_is_undone_by_the_phase_switches(tmp_path: Path) -> None:
    """The oracle that the fit really switches phases: bn.eval() at fit start does not last."""

    class EvalAtStart(pl.Callback):
        def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            pl_module.backbone.eval()

    model = Net()
    before = _stats(model.backbone[1])
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=STEPS, limit_val_batches=1, num_sanity_val_steps=0,
        logger=False,
        callbacks=[EvalAtStart()], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu",
    )  # fmt: skip
    with _quiet():
        trainer.fit(model, _data(), _data(2))
    # after the first validation loop, model.train() put the layer back in train()
    assert int(model.backbone[1].num_batches_tracked) == STEPS
    assert not torch.equal(model.backbone[1].running_mean, before[0])


def _jeffreys(
    m0: torch.Tensor, v0: torch.Tensor, m1: torch.Tensor, v1: torch.Tensor, eps: float
) -> float:
    a, b = v0.double() + eps, v1.double() + eps
    d = (m0.double() - m1.double()).square()
    return float((0.5 * (a / b + b / a - 2) + 0.5 * d * (1 / a + 1 / b)).mean())


def test_watch_numbers_reach_the_logger(tmp_path: Path) -> None:
    model, logger = Net(), Recorder()
    start = _stats(model.head[1])
    _fit(model, BatchNormPolicy("frozen", where="backbone", per_layer=True), tmp_path, logger)
    rows = [m for _, m in logger.rows if "bnkit/updates_per_step" in m]
    assert len(rows) == 2 * STEPS  # every training step, as log_every_n_steps=1
    for m in rows:
        assert m["bnkit/updates_per_step"] == 1.0 and m["bnkit/layers_moved"] == 1.0
        assert m["bnkit/backbone.1/batches"] == 0.0 and m["bnkit/backbone.1/mean_change"] == 0.0
        assert m["bnkit/head.1/batches"] == 1.0 and m["bnkit/head.1/mean_change"] > 0
    end = model.head[1]
    drift = _jeffreys(start[0], start[1], end.running_mean, end.running_var, end.eps)
    assert rows[-1]["bnkit/head.1/drift"] == pytest.approx(drift, rel=1e-9)
    assert rows[-1]["bnkit/max_drift"] == pytest.approx(drift, rel=1e-9)


def test_recalibrate_and_restore_at_fit_end(tmp_path: Path) -> None:
    model = Net()
    calib = _data(3)
    before = _stats(model.backbone[1])
    callback = BatchNormPolicy("frozen", where="backbone", recalibrate=calib, restore=True)
    _fit(model, callback, tmp_path)
    # recalibrated with the policy in place: the frozen backbone kept its statistics
    for got, expected in zip(_stats(model.backbone[1]), before, strict=True):
        assert torch.equal(got, expected)
    oracle = bnkit.apply(copy.deepcopy(model), "frozen", where="backbone")
    expected = bnkit.recalibrate(oracle, calib, progress=False)
    assert torch.equal(model.head[1].running_mean, expected.head[1].running_mean)
    assert torch.equal(model.head[1].running_var, expected.head[1].running_var)
    assert int(model.head[1].num_batches_tracked) == 3  # the batches of the pass
    # ...and then restored: plain layers again, gamma/beta trainable
    assert bnkit.managed_layers(model) == []
    assert model.backbone[1].weight.requires_grad


def test_a_failed_fit_restores_the_layers(tmp_path: Path) -> None:
    model = Net(fail_at=1)
    with pytest.raises(RuntimeError, match="bad batch"):
        _fit(model, BatchNormPolicy("frozen", where="backbone", restore=True), tmp_path)
    assert bnkit.managed_layers(model) == []


def test_arguments_are_checked() -> None:
    with pytest.raises(bnkit.PolicyError, match="unknown preset"):
        BatchNormPolicy("frozn")
    with pytest.raises(bnkit.PolicyError, match="give a policy too"):
        BatchNormPolicy(None, where="backbone")
    with pytest.raises(bnkit.PolicyError, match="recalibrate= takes the data"):
        BatchNormPolicy("frozen", recalibrate=3)  # type: ignore[arg-type]
