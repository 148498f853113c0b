"""What a study runs on: its data, its target domains and its source models.

:class:`Bench` is the default benchmark (the digits, shifted in numpy; the small ResNet and its
GroupNorm twin, pretrained per seed). :class:`bnkit.study.user.UserBench` replaces the data and
the model with the user's. A :class:`BenchSpec` is the picklable description that worker
processes rebuild a bench from.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bnkit.study.config import StudyConfig
from bnkit.study.data import Domain, Split, digits, shifted, split
from bnkit.study.models import build_model
from bnkit.study.pretrain import Pretrained, pretrained
from bnkit.study.shifts import SHIFTS, levels

__all__ = ["Bench", "BenchSpec", "UserSpec", "make_bench"]


@dataclasses.dataclass(frozen=True)
class UserSpec:
    """The user's own case: a model factory (and checkpoint), a data folder or factory."""

    model: str
    data: str
    checkpoint: str | None = None
    image_size: int | None = None


@dataclasses.dataclass(frozen=True)
class BenchSpec:
    """Everything a process needs to rebuild the bench (plain, picklable data)."""

    config: StudyConfig
    cache_dir: str
    device: str
    user: UserSpec | None = None


class Bench:
    """The default benchmark: digits, numpy shifts, the small ResNet and its GroupNorm twin."""

    name = "digits"

    def __init__(self, spec: BenchSpec) -> None:
        self.spec = spec
        self.config = spec.config
        self.device = torch.device(spec.device)
        self._models: dict[tuple[str, int], Pretrained] = {}
        self._splits: dict[int, Split] = {}
        self._targets: dict[tuple[int, str, int], tuple[Domain, Domain]] = {}

    # ------------------------------------------------------------------ description
    @property
    def norms(self) -> tuple[str, ...]:
        """The model kinds: "bn", and "gn" when the GroupNorm control runs."""
        return ("bn", "gn") if self.config.groupnorm else ("bn",)

    def targets(self) -> list[tuple[str, int]]:
        """(shift, severity) pairs of the test-time protocol, the unshifted one first."""
        pairs = [("none", 0)]
        for name in self.config.shifts:
            pairs.extend((name, s) for s in levels(name, self.config.severities))
        return pairs

    def finetune_targets(self) -> list[tuple[str, int]]:
        """(shift, severity) pairs of the fine-tuning protocol."""
        sev = self.config.finetune.severity
        return [(name, levels(name, (sev,))[0]) for name in self.config.finetune.shifts]

    def shots(self) -> tuple[int, ...]:
        """The labels per class (k) of the fine-tuning protocol."""
        return self.config.finetune.shots

    def sweep_severity(self, shift: str) -> int:
        """The severity at which the sweeps run for ``shift``."""
        return levels(shift, self.config.severities)[-1]

    def family(self, shift: str) -> str:
        """The shift's family ("none" for the unshifted target)."""
        return SHIFTS[shift].family if shift in SHIFTS else "none"

    @functools.cached_property
    def pool_size(self) -> int:
        """Size of the target pool (the same for every seed: the split is stratified)."""
        return len(self.split(0).target_pool)

    def describe(self) -> dict[str, Any]:
        """Plain data about the bench, for the report."""
        s = self.split(0)
        return {
            "bench": self.name,
            "data": f"scikit-learn digits, {self.config.image_size}×{self.config.image_size}",
            "sizes": {
                "source_train": len(s.source_train),
                "source_val": len(s.source_val),
                "target_pool": len(s.target_pool),
                "target_test": len(s.target_test),
            },
            "classes": 10,
            "model": f"ResNetSmall(width={self.config.width})",
        }

    # ------------------------------------------------------------------ data and models
    def data(self) -> Domain:
        return digits(self.config.image_size)

    def split(self, seed: int) -> Split:
        """The four disjoint parts of the data for ``seed`` (kept in memory)."""
        if seed not in self._splits:
            self._splits[seed] = self.make_split(seed)
        return self._splits[seed]

    def make_split(self, seed: int) -> Split:
        return split(self.data(), seed)

    def target(self, seed: int, shift: str, severity: int) -> tuple[Domain, Domain]:
        """The target pool and target test set under the shift (the last few kept)."""
        key = (seed, shift, severity)
        if key not in self._targets:
            if len(self._targets) >= 4:
                del self._targets[next(iter(self._targets))]
            self._targets[key] = self.make_target(seed, shift, severity)
        return self._targets[key]

    def make_target(self, seed: int, shift: str, severity: int) -> tuple[Domain, Domain]:
        s = self.split(seed)
        return (
            shifted(s.target_pool, shift, severity, seed, "pool"),
            shifted(s.target_test, shift, severity, seed, "test"),
        )

    def in_channels(self) -> int:
        return int(self.data().x.shape[1])

    def num_classes(self) -> int:
        return 10

    def build(self, norm: str) -> nn.Module:
        """A freshly initialized network."""
        return build_model(
            norm,
            in_channels=self.in_channels(),
            num_classes=self.num_classes(),
            width=self.config.width,
        )

    def model_description(self, norm: str) -> dict[str, Any]:
        return {
            "name": f"digits-{norm}",
            "width": self.config.width,
            "image_size": self.config.image_size,
        }

    def source_model(self, norm: str, seed: int) -> Pretrained:
        """The pretrained source model (cached on disk and in this process)."""
        if (norm, seed) not in self._models:
            s = self.split(seed)
            self._models[(norm, seed)] = pretrained(
                lambda: self.build(norm),
                self.model_description(norm),
                s.source_train,
                s.source_val,
                settings=self.config.pretrain,
                seed=seed,
                cache_dir=Path(self.spec.cache_dir),
                device=self.device,
            )
        return self._models[(norm, seed)]


_BENCHES: dict[BenchSpec, Bench] = {}


def make_bench(spec: BenchSpec) -> Bench:
    """The bench for ``spec`` (one per process and spec)."""
    if spec not in _BENCHES:
        if spec.user is None:
            _BENCHES[spec] = Bench(spec)
        else:
            from bnkit.study.user import UserBench

            _BENCHES[spec] = UserBench(spec)
    return _BENCHES[spec]
