"""The study's settings: frozen dataclasses, with the default run and the quick one.

Everything that decides what a cell computes is a field here (stress settings included), so it
is declared before the run and is part of every cell's identity. A TOML file sets any subset
of the fields (:mod:`bnkit.study.config.parse`); values are checked before any work
(:mod:`bnkit.study.config.validate`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from bnkit.study.config.names import REAL, STREAMS, TEST_TIME_STRATEGIES
from bnkit.study.config.parse import convert, read_toml
from bnkit.study.config.validate import validate

__all__ = [
    "AdaptConfig",
    "BnOnlyConfig",
    "DataConfig",
    "FineTuneConfig",
    "PretrainConfig",
    "StudyConfig",
    "VerdictConfig",
]


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Source training until convergence: SGD (momentum 0.9), linear warmup, then a constant
    learning rate; the held-out source loss is measured every ``eval_every`` steps and
    training stops when it has not improved for ``patience`` measurements (or at
    ``max_steps``); the best measured weights are kept. ``eval_batch_size`` is the batch of
    every prediction on source data (the held-out loss, the BN-only check's score)."""

    batch_size: int = 32
    lr: float = 0.05
    weight_decay: float = 5e-4
    warmup_steps: int = 50
    eval_every: int = 50
    patience: int = 3
    max_steps: int = 600
    eval_batch_size: int = 512


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    """Protocol 1, unsupervised adaptation at test time.

    The sweeps (``adabn_n``, ``batch_sizes``, ``streams``) run at the highest severity, on the
    unshifted target and on the real dataset shifts; lower severities run ``source``,
    ``adabn`` on the whole pool and ``test_batch`` at the largest batch size. The stress arms
    (``tent_long``, ``tent_reset``) run on ``stress_shifts``: a stream of ``stress_images``
    images (the target test set again and again, each time in a new order) at TENT's
    ``stress_lr``, scored on the last pass. ``eval_batch_size`` is the prediction batch of the
    strategies that do not depend on the test batch (``source``, ``adabn``),
    ``stats_batch_size`` the batch of AdaBN's statistics pass over the target pool.
    """

    strategies: tuple[str, ...] = TEST_TIME_STRATEGIES  # every one the study knows
    adabn_n: tuple[int | None, ...] = (16, 64, None)
    batch_sizes: tuple[int, ...] = (1, 4, 16, 64)
    streams: tuple[str, ...] = STREAMS
    dirichlet_alpha: float = 0.1
    prior_strength: float = 16.0
    adapt_momentum: float = 0.01
    tent_lr: float = 1e-3
    tent_batch_size: int = 64
    stress_lr: float = 1e-3
    stress_images: int = 4096
    reset_every: int = 8
    stress_shifts: tuple[str, ...] = ("contrast", "gaussian_noise", *REAL)
    eval_batch_size: int = 512
    stats_batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class FineTuneConfig:
    """Protocol 2, supervised few-shot fine-tuning.

    Every strategy trains for ``steps`` SGD steps (momentum 0.9; linear warmup over
    ``warmup_steps``, then cosine decay) at every learning rate of ``lrs``; the learning rate
    of each strategy is then chosen on a labelled target validation split (never on the test
    set), separately per strategy and batch size. ``"none"`` among the shifts is the
    small-batch scenario without a shift (fine-tuning on more source-domain images).
    ``eval_batch_size`` is the batch of the validation and test predictions,
    ``stats_batch_size`` the batch of ``adabn_finetune``'s statistics pass.
    """

    strategies: tuple[str, ...] = ("pytorch", "frozen_stats", "bn_only", "adabn_finetune")
    shifts: tuple[str, ...] = ("none", "contrast", "mnist_to_digits")
    severity: int = 5
    shots: tuple[int, ...] = (10,)
    batch_sizes: tuple[int, ...] = (2, 8)
    steps: int = 200
    warmup_steps: int = 20
    lrs: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    curve_points: int = 5
    ghost_size: int = 4
    eval_batch_size: int = 512
    stats_batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class BnOnlyConfig:
    """The BN-only check: a randomly initialized BN network trained only in gamma/beta."""

    steps: int = 400
    lr: float = 0.5


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How images are read and fed to the model.

    Args:
        mean: per-channel mean subtracted from the user's images (``--data``); empty:
            computed once on all source images, recorded in the report and in every cell's
            key. The built-in data sets are used as they are, in [0, 1].
        std: per-channel standard deviation the user's images are divided by; empty (with
            ``mean``): computed once on the source images, as ``mean`` is.
        loader_workers: ``DataLoader`` processes that read the user's image files for each
            study worker; -1: 2 on a GPU, 0 (in the worker itself) on the CPU.
        mixed_precision: compute under ``torch.autocast`` in bfloat16 (for GPUs; no loss
            scaling is needed in bfloat16).
        channels_last: the model and its inputs in channels-last memory format (for GPUs).
    """

    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    loader_workers: int = -1
    mixed_precision: bool = False
    channels_last: bool = False


@dataclasses.dataclass(frozen=True)
class VerdictConfig:
    """How verdicts are decided (declared before the run; see ``bnkit.study.results.rules``).

    Args:
        level: confidence level of every interval.
        big: the margin (accuracy, 0–1) of "much better" claims.
        non_inferiority: the margin of "not worse" claims.
        hurt: a target counts as a shift only if the source model loses more than this
            (the interval of its drop lies below −hurt).
        chance_margin: a target where the source model is within this of chance is left out
            (the task is destroyed, nothing can be learned from it).
    """

    level: float = 0.95
    big: float = 0.05
    non_inferiority: float = 0.01
    hurt: float = 0.05
    chance_margin: float = 0.05


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Everything that decides what the study runs and computes.

    Args:
        seeds: number of seeds (0, 1, …); each seed has its own data split, source models,
            shifted images and few-shot samples.
        image_size: side of the (square) images; every data set is resized to it.
        width: channels of the network's first stage.
        shifts: target domains: synthetic shifts of the digits (see
            :mod:`bnkit.study.data.shifts`; ``shot_noise`` and ``pixelate`` are available but
            left out of the default to keep it within 10 minutes on 2 cores) and the real
            dataset shifts ``mnist_to_digits`` and ``digits_to_mnist``; ``"none"`` (the
            unshifted digits) is always added.
        severities: severities 1–5 of the synthetic shifts.
        groupnorm: also train and score the GroupNorm twin (the control without batch stats).
    """

    seeds: int = 5
    image_size: int = 16
    width: int = 16
    shifts: tuple[str, ...] = (
        "contrast",
        "brightness",
        "inversion",
        "gaussian_noise",
        "impulse_noise",
        "defocus_blur",
        "rotation",
        *REAL,
    )
    severities: tuple[int, ...] = (1, 3, 5)
    groupnorm: bool = True
    pretrain: PretrainConfig = PretrainConfig()
    test_time: AdaptConfig = AdaptConfig()
    finetune: FineTuneConfig = FineTuneConfig()
    bn_only: BnOnlyConfig = BnOnlyConfig()
    data: DataConfig = DataConfig()
    verdicts: VerdictConfig = VerdictConfig()

    def __post_init__(self) -> None:
        validate(self)

    @classmethod
    def default(cls) -> StudyConfig:
        """The default benchmark."""
        return cls()

    @classmethod
    def quick(cls) -> StudyConfig:
        """A smaller grid (3 seeds, severity 5, fewer sweeps) for a first look."""
        return cls(
            seeds=3,
            shifts=("contrast", "gaussian_noise", "rotation", "mnist_to_digits"),
            severities=(5,),
            test_time=AdaptConfig(
                adabn_n=(16, None),
                batch_sizes=(1, 64),
                stress_images=2048,
                stress_shifts=("contrast", "mnist_to_digits"),
            ),
            finetune=FineTuneConfig(
                strategies=("pytorch", "frozen_stats", "adabn_finetune"),
                shifts=("none", "contrast"),
                batch_sizes=(2,),
            ),
            bn_only=BnOnlyConfig(steps=150),
        )

    @classmethod
    def from_toml(cls, path: str | Path, base: StudyConfig | None = None) -> StudyConfig:
        """``base`` (default: :meth:`default`) with the settings of the TOML file at ``path``.

        Raises:
            StudyError: unreadable or non-UTF-8 file, bad TOML, unknown key, wrong type or value.
        """
        return (base or cls()).replace_from(read_toml(path), where=str(path))

    def replace_from(self, data: dict[str, Any], where: str = "settings") -> StudyConfig:
        """A copy with the (nested) settings in ``data`` applied, checked like a TOML file."""
        return dataclasses.replace(self, **convert(type(self), self, data, where))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON- and TOML-friendly; ``None`` in ``adabn_n`` becomes "all")."""
        out: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(self)))
        out["test_time"]["adabn_n"] = [
            "all" if n is None else n for n in out["test_time"]["adabn_n"]
        ]
        return out

    def settings_for(self, protocol: str) -> dict[str, Any]:
        """The settings that decide what one cell of ``protocol`` computes.

        Grid axes (which seeds, shifts, strategies, sizes run) are left out, so a larger grid
        reuses the cells of a smaller one made with the same settings; so is the number of
        loader processes, which changes how fast images arrive, not which.
        """
        d = self.to_dict()
        axes = {"strategies", "adabn_n", "batch_sizes", "streams", "shifts", "shots", "lrs"}
        axes.add("stress_shifts")
        data = {k: v for k, v in d["data"].items() if k != "loader_workers"}
        keep: dict[str, Any] = {"width": d["width"], "pretrain": d["pretrain"], "data": data}
        if protocol in d:
            keep[protocol] = {k: v for k, v in d[protocol].items() if k not in axes}
        return keep
