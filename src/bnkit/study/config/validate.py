"""Checking a study's settings before any work: every bad value is one clear error.

A value that could only fail later (a negative learning rate, a batch size of 0, an unknown
strategy) is refused here, when the configuration is made, so a run never pretrains for
minutes and then stops on a setting.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from bnkit.errors import StudyError
from bnkit.study.config.names import (
    FINETUNE_STRATEGIES,
    REAL,
    STREAMS,
    SYNTHETIC,
    TEST_TIME_STRATEGIES,
)

if TYPE_CHECKING:
    from bnkit.study.config.settings import StudyConfig

__all__ = ["validate"]


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise StudyError(message)


def _names(given: Iterable[str], known: Iterable[str], what: str) -> None:
    known = tuple(known)
    bad = [n for n in given if n not in known]
    _need(not bad, f"unknown {what} {bad}; known: {', '.join(known)}")


def _positive(values: dict[str, float]) -> None:
    for name, v in values.items():
        _need(math.isfinite(v) and v > 0, f"{name} must be a positive number (got {v!r})")


def validate(c: StudyConfig) -> None:
    """Raise :class:`~bnkit.errors.StudyError` naming the first bad setting of ``c``."""
    tt, ft, pt, bo, vd = c.test_time, c.finetune, c.pretrain, c.bn_only, c.verdicts
    _names(c.shifts, (*SYNTHETIC, *REAL), "shifts")
    _names(ft.shifts, ("none", *SYNTHETIC, *REAL), "fine-tuning shifts")
    _names(tt.stress_shifts, (*SYNTHETIC, *REAL), "stress shifts")
    _names(tt.strategies, TEST_TIME_STRATEGIES, "test-time strategies")
    _names(ft.strategies, FINETUNE_STRATEGIES, "fine-tuning strategies")
    _names(tt.streams, STREAMS, "streams")
    _need(c.seeds >= 1, f"seeds must be at least 1 (got {c.seeds})")
    _need(c.image_size >= 8, f"image_size must be at least 8 (got {c.image_size})")
    _need(c.width >= 4, f"width must be at least 4 (got {c.width})")
    _need(
        bool(c.severities) and all(1 <= s <= 5 for s in c.severities),
        f"severities are 1 to 5 (got {list(c.severities)})",
    )
    _need(1 <= ft.severity <= 5, f"finetune severity must be 1 to 5 (got {ft.severity})")
    sizes = (*tt.batch_sizes, *ft.batch_sizes, tt.tent_batch_size, pt.batch_size)
    _need(all(b >= 1 for b in sizes), f"batch sizes must be at least 1 (got {list(sizes)})")
    _need(all(b >= 2 for b in ft.batch_sizes), "fine-tuning batch sizes must be >= 2")
    _need(all(n is None or n >= 2 for n in tt.adabn_n), "adabn_n values must be >= 2 or 'all'")
    _need(all(k >= 1 for k in ft.shots), "shots (labels per class) must be >= 1")
    _positive({"pretrain lr": pt.lr, "test_time tent_lr": tt.tent_lr})
    _positive({"test_time stress_lr": tt.stress_lr, "bn_only lr": bo.lr})
    _positive({f"finetune lr {lr!r}": lr for lr in ft.lrs})
    _need(bool(ft.lrs) or not ft.strategies, "finetune lrs must name at least one rate")
    _need(
        math.isfinite(tt.prior_strength) and tt.prior_strength >= 0,
        f"prior_strength must be >= 0 (got {tt.prior_strength})",
    )
    _need(0 < tt.adapt_momentum <= 1, f"adapt_momentum must be in (0, 1] ({tt.adapt_momentum})")
    _need(tt.dirichlet_alpha > 0, f"dirichlet_alpha must be > 0 (got {tt.dirichlet_alpha})")
    _need(tt.stress_images >= 1 and tt.reset_every >= 1, "stress_images, reset_every >= 1")
    _need(pt.weight_decay >= 0, f"pretrain weight_decay must be >= 0 (got {pt.weight_decay})")
    _need(
        pt.max_steps >= 1 and pt.eval_every >= 1 and pt.patience >= 1 and pt.warmup_steps >= 0,
        "pretrain max_steps, eval_every and patience must be >= 1, warmup_steps >= 0",
    )
    _need(ft.steps >= 1 and 0 <= ft.warmup_steps < ft.steps, "finetune: 0 <= warmup < steps")
    _need(ft.curve_points >= 2, f"finetune curve_points must be >= 2 (got {ft.curve_points})")
    _need(ft.ghost_size >= 1, f"ghost_size must be >= 1 (got {ft.ghost_size})")
    _need(bo.steps >= 0, f"bn_only steps must be >= 0 (got {bo.steps})")
    dc = c.data
    evals = [pt.eval_batch_size, tt.eval_batch_size, tt.stats_batch_size, ft.eval_batch_size]
    evals.append(ft.stats_batch_size)
    _need(min(evals) >= 1, f"eval and stats batch sizes must be at least 1 (got {evals})")
    _need(
        len(dc.mean) == len(dc.std),
        f"data mean and std need one value per channel each (got {list(dc.mean)} and "
        f"{list(dc.std)})",
    )
    _need(all(s > 0 for s in dc.std), f"data std values must be > 0 (got {list(dc.std)})")
    _need(dc.loader_workers >= -1, f"loader_workers must be >= -1 (got {dc.loader_workers})")
    _need(0.5 < vd.level < 1, f"verdicts level must be in (0.5, 1) (got {vd.level})")
    for name in ("big", "non_inferiority", "hurt", "chance_margin"):
        value = getattr(vd, name)
        _need(0 <= value < 1, f"verdicts {name} must be in [0, 1) (got {value})")
