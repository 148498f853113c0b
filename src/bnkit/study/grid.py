"""The grid: every cell a configuration asks for, each exactly once, in a stable order.

Test-time protocol, per seed and target (shift, severity):

* at the sweep severity (the highest; and on the unshifted target): ``source``; ``adabn`` for
  every ``adabn_n`` (capped at the pool size); ``test_batch``, ``prior`` and ``adapt`` at every
  test batch size and stream; ``tent`` on every stream and ``tent_stress`` on the i.i.d. stream
  at the TENT batch size; the GroupNorm twin's ``source``;
* at the other severities: ``source``, ``adabn`` on the whole pool, ``test_batch`` at the largest
  batch size, ``tent`` (i.i.d.) and the GroupNorm ``source``.

``test_batch`` and ``prior`` at batch size 1 run on the i.i.d. stream only: with one sample per
batch the order of the stream cannot change their output.

Fine-tuning protocol, per seed, fine-tuning target, k, batch size and learning rate: every
strategy on the BN model, and ``pytorch`` (plain fine-tuning) on the GroupNorm twin.

BN-only check: one cell per seed.
"""

from __future__ import annotations

from bnkit.study.bench import Bench
from bnkit.study.cells import Cell

__all__ = ["grid"]

_SWEPT = ("test_batch", "prior", "adapt")


def grid(bench: Bench) -> list[Cell]:
    """All cells of the study on ``bench``, without duplicates."""
    c = bench.config
    tt, ft = c.test_time, c.finetune
    tt_hash = c.settings_hash("test_time")
    ft_hash = c.settings_hash("finetune")
    bo_hash = c.settings_hash("bn_only")
    cells: list[Cell] = []

    def add(
        protocol: str, model: str, strategy: str, shift: str, severity: int, **kw: object
    ) -> None:
        settings = {"test_time": tt_hash, "finetune": ft_hash, "bn_only": bo_hash}[protocol]
        values: dict[str, object] = {"stream": "iid", "batch_size": 0, "n": 0, "k": 0, "lr": 0.0}
        values.update(kw)
        cells.append(
            Cell(protocol, model, strategy, shift, severity, settings=settings, **values)  # type: ignore[arg-type]
        )

    pool = bench.pool_size
    n_values = sorted({pool if n is None else min(n, pool) for n in tt.adabn_n})
    strategies = set(tt.strategies)
    for seed in range(c.seeds):
        for shift, sev in bench.targets():
            sweep = shift == "none" or sev == bench.sweep_severity(shift)
            if "gn" in bench.norms:
                add("test_time", "gn", "source", shift, sev, seed=seed)
            if "source" in strategies:
                add("test_time", "bn", "source", shift, sev, seed=seed)
            if "adabn" in strategies:
                for n in n_values if sweep else [max(n_values)]:
                    add("test_time", "bn", "adabn", shift, sev, n=n, seed=seed)
            for name in _SWEPT:
                if name not in strategies or (not sweep and name != "test_batch"):
                    continue
                sizes = tt.batch_sizes if sweep else (max(tt.batch_sizes),)
                streams = tt.streams if sweep else ("iid",)
                for bs in sizes:
                    for stream in streams:
                        if bs == 1 and stream != "iid" and name != "adapt":
                            continue
                        add(
                            "test_time",
                            "bn",
                            name,
                            shift,
                            sev,
                            stream=stream,
                            batch_size=bs,
                            seed=seed,
                        )
            if "tent" in strategies:
                for stream in tt.streams if sweep else ("iid",):
                    add(
                        "test_time",
                        "bn",
                        "tent",
                        shift,
                        sev,
                        stream=stream,
                        batch_size=tt.tent_batch_size,
                        seed=seed,
                    )
            if "tent_stress" in strategies and sweep:
                add(
                    "test_time",
                    "bn",
                    "tent_stress",
                    shift,
                    sev,
                    batch_size=tt.tent_batch_size,
                    seed=seed,
                )
        for shift, sev in bench.finetune_targets():
            for k in bench.shots():
                for bs in ft.batch_sizes:
                    for lr in ft.lrs:
                        kw = {"batch_size": bs, "k": k, "lr": lr, "seed": seed}
                        for name in ft.strategies:
                            n = pool if name == "adabn_finetune" else 0
                            add("finetune", "bn", name, shift, sev, n=n, **kw)
                        if "gn" in bench.norms:
                            add("finetune", "gn", "pytorch", shift, sev, **kw)
        if c.bn_only.epochs > 0 and "bn" in bench.norms and bench.name == "digits":
            add("bn_only", "bn", "scratch", "source", 0, seed=seed)
    assert len(set(cells)) == len(cells)
    return cells
