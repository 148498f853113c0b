"""Cells: one measurement each, and the columns of the row it produces.

A cell is (protocol, model, strategy, shift, severity, stream, batch size, n, k, lr, seed): its
coordinates in the grid. What else decides its numbers (the data, the model, the settings, the
versions) is not a coordinate but part of its key (:mod:`bnkit.study.execution.identity`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["ROW_FIELDS", "Cell"]

ROW_FIELDS = (
    "protocol",
    "model",
    "strategy",
    "shift",
    "family",
    "source",
    "severity",
    "stream",
    "batch_size",
    "n",
    "k",
    "lr",
    "seed",
    "accuracy",
    "val_accuracy",
    "ece",
    "nonfinite",
    "curve",
    "wall_s",
    "images_per_s",
)
"""The columns of ``results.csv``, in order (``curve``: validation accuracies along
fine-tuning, joined by ``;``)."""


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
    """One measurement of the grid.

    Attributes:
        protocol: ``"test_time"``, ``"finetune"`` or ``"bn_only"``.
        model: ``"bn"`` or ``"gn"`` (the GroupNorm twin).
        strategy: a strategy of the protocol (``"scratch"`` for bn_only).
        shift, severity: the target (``"none"``/0 unshifted, real shifts at 0, ``"source"``
            for bn_only).
        stream: test stream order, ``"iid"``, ``"sorted"`` or ``"dirichlet"``.
        batch_size: test batch size (test_time) or fine-tuning batch size; 0 if unused.
        n: unlabelled target samples for AdaBN's statistics (0: the whole pool, or unused).
        k: labels per class (finetune); 0 if unused.
        lr: fine-tuning learning rate; 0 if unused.
        seed: the seed.
    """

    protocol: str
    model: str
    strategy: str
    shift: str
    severity: int
    stream: str = "iid"
    batch_size: int = 0
    n: int = 0
    k: int = 0
    lr: float = 0.0
    seed: int = 0

    @property
    def name(self) -> str:
        """A readable unique name (safe as a file name)."""
        return (
            f"{self.protocol}.{self.model}.{self.strategy}.{self.shift}{self.severity}."
            f"{self.stream}.b{self.batch_size}.n{self.n}.k{self.k}.lr{self.lr:g}.s{self.seed}"
        )

    def fields(self) -> dict[str, Any]:
        """The cell's coordinates as row fields."""
        return dataclasses.asdict(self)
