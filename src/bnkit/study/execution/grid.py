"""The grid: every cell a configuration asks for, each exactly once, in a stable order.

Test-time protocol, per seed and target (shift, severity):

* on the sweep targets (each shift's highest severity, the unshifted target and the real
  shifts): ``source``; ``adabn`` for every ``adabn_n`` (0: the whole pool); ``test_batch``,
  ``prior`` and ``adapt`` at every test batch size and stream; ``tent`` on every stream at the
  TENT batch size; on the ``stress_shifts``, ``tent_long`` and ``tent_reset`` (i.i.d.); the
  GroupNorm twin's ``source`` (on targets of the digits' source model);
* at the other severities: ``source``, ``adabn`` on the whole pool, ``test_batch`` at the
  largest batch size and the GroupNorm ``source``.

``test_batch`` and ``prior`` at batch size 1 run on the i.i.d. stream only: with one sample per
batch the order of the stream cannot change their output.

Fine-tuning protocol, per seed, fine-tuning target, k, batch size and learning rate: every
strategy on the BN model, and ``pytorch`` (plain fine-tuning) on the GroupNorm twin (when any
strategy runs).

BN-only check: one cell per seed.
"""

from __future__ import annotations

from bnkit.study.execution.bench import Bench
from bnkit.study.execution.cells import Cell

__all__ = ["grid"]

_SWEPT = ("test_batch", "prior", "adapt")


def _test_time(bench: Bench, seed: int, shift: str, sev: int) -> list[Cell]:
    tt = bench.config.test_time
    chosen = set(tt.strategies)
    sweep = bench.is_sweep(shift, sev)
    pool = bench.pool_size(shift)
    cells: list[Cell] = []

    def add(model: str, strategy: str, **kw: object) -> None:
        cells.append(Cell("test_time", model, strategy, shift, sev, seed=seed, **kw))  # type: ignore[arg-type]

    if bench.has_model(shift, "gn") and "source" in chosen:
        add("gn", "source")
    if "source" in chosen:
        add("bn", "source")
    if "adabn" in chosen:
        ns = sorted(
            {0 if n is None or n >= pool else n for n in tt.adabn_n}, key=lambda n: n or pool
        )
        for n in ns if sweep else [0]:
            add("bn", "adabn", n=n)
    for name in _SWEPT:
        if name not in chosen or (not sweep and name != "test_batch"):
            continue
        sizes = tt.batch_sizes if sweep else (max(tt.batch_sizes),)
        for bs in sizes:
            for stream in tt.streams if sweep else ("iid",):
                if bs == 1 and stream != "iid" and name != "adapt":
                    continue
                add("bn", name, stream=stream, batch_size=bs)
    if "tent" in chosen and sweep:
        for stream in tt.streams:
            add("bn", "tent", stream=stream, batch_size=tt.tent_batch_size)
    stressed = bench.name == "user" or shift in tt.stress_shifts
    for name in ("tent_long", "tent_reset"):
        if name in chosen and sweep and stressed:
            add("bn", name, batch_size=tt.tent_batch_size)
    return cells


def grid(bench: Bench) -> list[Cell]:
    """All cells of the study on ``bench``, without duplicates."""
    c = bench.config
    ft = c.finetune
    cells: list[Cell] = []
    for seed in range(c.seeds):
        for shift, sev in bench.targets():
            cells += _test_time(bench, seed, shift, sev)
        for shift, sev in bench.finetune_targets():
            for k in bench.shots():
                for bs in ft.batch_sizes:
                    for lr in ft.lrs:
                        kw = {"batch_size": bs, "k": k, "lr": lr, "seed": seed}
                        for name in ft.strategies:
                            cells.append(Cell("finetune", "bn", name, shift, sev, **kw))  # type: ignore[arg-type]
                        if ft.strategies and bench.has_model(shift, "gn"):
                            cells.append(Cell("finetune", "gn", "pytorch", shift, sev, **kw))  # type: ignore[arg-type]
        if bench.has_bn_only():
            cells.append(Cell("bn_only", "bn", "scratch", "source", 0, seed=seed))
    if len(set(cells)) != len(cells):
        raise AssertionError("the grid holds a cell twice")
    return cells
