"""BatchNormPolicyCallback with the real transformers Trainer (CPU, tiny model, a few steps):
the policy holds through the Trainer's model.train() at every step and model.eval() for every
evaluation, the watch numbers reach the Trainer's logs, and training ends with a
recalibration and a restore when asked."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

import bnkit
from bnkit.integrations.transformers import BatchNormPolicyCallback

STEPS = 4


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(8, 4, bias=False), nn.BatchNorm1d(4))
        with torch.no_grad():
            self.backbone[1].running_mean.uniform_(-1, 1)
            self.backbone[1].running_var.uniform_(0.5, 2)
        self.phases: list[tuple[bool, bool, str]] = []

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        bn = self.backbone[1]
        self.phases.append((self.training, bn.training, repr(bnkit.policy_of(bn))))
        out = self.head(self.backbone(x))
        loss = (out - labels).square().mean() if labels is not None else out.sum() * 0
        return {"loss": loss, "logits": out}


class Points(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int = 64, seed: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g) * 2 + 1
        self.y = torch.randn(n, 4, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class Recorder(TrainerCallback):
    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        self.logs.append(dict(logs or {}))


def _trainer(model: Net, tmp: Path, callbacks: list[TrainerCallback]) -> Trainer:
    args = TrainingArguments(
        output_dir=str(tmp),
        max_steps=STEPS,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=16,
        learning_rate=0.1,
        logging_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return Trainer(
        model=model, args=args, train_dataset=Points(), eval_dataset=Points(16, 2),
        callbacks=callbacks,
    )  # fmt: skip


def _train(trainer: Trainer) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"transformers\.")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
        trainer.train()


def _stats(layer: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for t in (layer.running_mean, layer.running_var, layer.num_batches_tracked)]


def test_the_policy_survives_the_trainers_phase_switches(tmp_path: Path) -> None:
    model = Net()
    before = _stats(model.backbone[1])
    _train(_trainer(model, tmp_path, [BatchNormPolicyCallback("frozen", where="backbone")]))
    assert {(m, bn) for m, bn, _ in model.phases} == {(True, True), (False, False)}
    assert {policy for _, _, policy in model.phases} == {"bnkit.preset('frozen')"}
    for got, expected in zip(_stats(model.backbone[1]), before, strict=True):
        assert torch.equal(got, expected)
    assert int(model.head[1].num_batches_tracked) == STEPS


def test_without_a_policy_bn_eval_is_undone_at_every_step(tmp_path: Path) -> None:
    class EvalAtStart(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            kwargs["model"].backbone.eval()

    model = Net()
    _train(_trainer(model, tmp_path, [EvalAtStart()]))
    assert int(model.backbone[1].num_batches_tracked) == STEPS


def test_watch_numbers_reach_the_logs(tmp_path: Path) -> None:
    model, recorder = Net(), Recorder()
    callback = BatchNormPolicyCallback("frozen", where="backbone", per_layer=True)
    trainer = _trainer(model, tmp_path, [recorder])
    callback.attach(trainer)  # ahead of the recorder (and of report_to integrations)
    assert trainer.callback_handler.callbacks[0] is callback
    _train(trainer)
    training = [log for log in recorder.logs if "loss" in log]
    assert len(training) == STEPS // 2
    for log in training:
        assert log["bnkit/updates_per_step"] == 1.0 and log["bnkit/layers_moved"] == 1.0
        assert log["bnkit/backbone.1/batches"] == 0.0 and log["bnkit/head.1/batches"] == 2.0
    assert all("bnkit/max_drift" not in log for log in recorder.logs if "loss" not in log)
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["bnkit/max_drift"] for h in history] == [log["bnkit/max_drift"] for log in training]


def test_recalibrate_and_restore_at_train_end(tmp_path: Path) -> None:
    model = Net()
    calib = [{"x": Points(32, 3).x[i : i + 8]} for i in range(0, 32, 8)]
    before = _stats(model.backbone[1])
    callback = BatchNormPolicyCallback("frozen", where="backbone", recalibrate=calib, restore=True)
    _train(_trainer(model, tmp_path, [callback]))
    for got, expected in zip(_stats(model.backbone[1]), before, strict=True):
        assert torch.equal(got, expected)
    oracle = bnkit.apply(copy.deepcopy(model), "frozen", where="backbone")
    expected = bnkit.recalibrate(oracle, calib, progress=False)
    assert torch.equal(model.head[1].running_mean, expected.head[1].running_mean)
    assert torch.equal(model.head[1].running_var, expected.head[1].running_var)
    assert bnkit.managed_layers(model) == []
