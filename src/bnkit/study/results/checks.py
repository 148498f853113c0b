"""The directional checks: what the literature says should happen, as one table of rules.

Every rule (:class:`~bnkit.study.results.rules.Rule`) is stated here before the run, with its
source, its kind and its margin; :func:`run_checks` evaluates them on a run's rows. Test-time
rules use only the targets the calibration kept (:mod:`bnkit.study.results.selection`: the
shift hurts the source model, which is not at chance there); fine-tuning rules use each
strategy at its learning rate chosen on the target validation split (:func:`run_checks` evaluates
every rule on the tuned rows).
"""

from __future__ import annotations

from typing import Any

from bnkit.study.results.results import Results
from bnkit.study.results.rules import Rule, run_rules
from bnkit.study.results.selection import (
    calibration,
    chance,
    informative_shifts,
    sweep,
    tuned,
)

__all__ = ["CHECKS", "run_checks"]


def _tt(strategy: str, **more: Any) -> dict[str, Any]:
    return {"protocol": "test_time", "model": "bn", "strategy": strategy, **more}


def _on(r: Results, *families: str, unshifted: bool = False) -> dict[str, Any]:
    """Informative sweep targets (of ``families``, all when empty), and "none" if asked."""
    good = informative_shifts(r)
    keep = {
        row["shift"]
        for row in r.select(protocol="test_time")
        if row["shift"] in good and (not families or row["family"] in families)
    }
    if unshifted:
        keep.add("none")
    return {"shift": lambda s: s in keep, **sweep(r)}


def _stress(r: Results) -> dict[str, Any]:
    names = set(r.config.get("test_time", {}).get("stress_shifts", [])) | {"target"}
    keep = informative_shifts(r) & names
    return {"shift": lambda s: s in keep, **sweep(r)}


def _rotation(r: Results) -> dict[str, Any]:
    sevs = {
        t.severity for t in calibration(r) if t.shift == "rotation" and t.status == "informative"
    }
    return {"shift": "rotation", "severity": lambda v: v in sevs}


def _ft(r: Results, strategy: str, shifted: bool, smallest: bool) -> dict[str, Any]:
    sizes = sorted({int(b) for b in r.config.get("finetune", {}).get("batch_sizes", [0])})
    bs = sizes[0] if smallest else sizes[-1]
    good = informative_shifts(r) - {"none"}
    shift = (lambda s: s in good) if shifted else "none"
    return {
        "protocol": "finetune",
        "model": "bn",
        "strategy": strategy,
        "batch_size": bs,
        "shift": shift,
    }


def _small(r: Results) -> dict[str, Any]:
    return {"batch_size": lambda b: 1 <= b <= 4, "stream": "iid"}


CHECKS: tuple[Rule, ...] = (
    Rule(
        "adabn_photometric",
        "AdaBN ≫ source statistics on photometric shifts",
        "Schneider et al. 2020; Li et al. 2016 (AdaBN); TENT README (norm)",
        "greater",
        "big",
        lambda r: {**_tt("adabn", n=0), **_on(r, "photometric")},
        lambda r: {**_tt("source"), **_on(r, "photometric")},
        "photometric shifts",
        ("adabn", "source"),
    ),
    Rule(
        "adabn_real",
        "AdaBN > source statistics on a real dataset shift (MNIST ↔ digits)",
        "Li et al. 2016 (AdaBN across data sets)",
        "greater",
        "zero",
        lambda r: {**_tt("adabn", n=0), **_on(r, "real", "user")},
        lambda r: {**_tt("source"), **_on(r, "real", "user")},
        "real dataset shifts",
        ("adabn", "source"),
    ),
    Rule(
        "adabn_vs_groupnorm",
        "adapted BN > the unadapted GroupNorm twin on photometric shifts",
        "Schneider et al. 2020 (BN + adaptation beats GroupNorm)",
        "greater",
        "zero",
        lambda r: {**_tt("adabn", n=0), **_on(r, "photometric")},
        lambda r: {**_tt("source", model="gn"), **_on(r, "photometric")},
        "photometric shifts",
        ("adabn", "GroupNorm twin"),
    ),
    Rule(
        "adabn_16_images",
        "16 unlabelled target images suffice: AdaBN(16) > source statistics",
        "Schneider et al. 2020; Benz et al. 2021 (32 samples)",
        "greater",
        "zero",
        lambda r: {**_tt("adabn", n=16), **_on(r)},
        lambda r: {**_tt("source"), **_on(r)},
        "informative shifts",
        ("adabn(16)", "source"),
    ),
    Rule(
        "test_batch_collapse",
        "test-batch statistics at batch size 1 fall below source statistics",
        "Nado et al. 2020; Lim et al. 2023 (TTN); Niu et al. 2023 (SAR)",
        "less",
        "zero",
        lambda r: {**_tt("test_batch", batch_size=1, stream="iid"), **_on(r, unshifted=True)},
        lambda r: {**_tt("source"), **_on(r, unshifted=True)},
        "informative shifts and the unshifted target",
        ("test_batch@1", "source"),
    ),
    Rule(
        "prior_small_batch",
        "prior mixing > test-batch statistics at batch sizes ≤ 4",
        "Schneider et al. 2020",
        "greater",
        "zero",
        lambda r: {**_tt("prior"), **_small(r), **_on(r, unshifted=True)},
        lambda r: {**_tt("test_batch"), **_small(r), **_on(r, unshifted=True)},
        "batch sizes ≤ 4, informative and unshifted targets",
        ("prior", "test_batch"),
    ),
    Rule(
        "tent_beats_norm",
        "TENT > test-batch statistics (norm) on an i.i.d. stream",
        "Wang et al. 2021 (TENT: 18.6 vs 20.4% error)",
        "greater",
        "zero",
        lambda r: {**_tt("tent", stream="iid"), **_on(r)},
        lambda r: {
            **_tt("test_batch", stream="iid", batch_size=r.config["test_time"]["tent_batch_size"]),
            **_on(r),
        },
        "informative shifts, same batch size",
        ("tent", "test_batch"),
    ),
    Rule(
        "sorted_hurts_test_batch",
        "label-sorted streams hurt test-batch statistics",
        "Niu et al. 2023 (SAR); Zhao et al. 2023 (TTAB); Lim et al. 2023 (TTN)",
        "less",
        "zero",
        lambda r: {
            **_tt("test_batch", stream="sorted", batch_size=lambda b: b > 1),
            **_on(r, unshifted=True),
        },
        lambda r: {
            **_tt("test_batch", stream="iid", batch_size=lambda b: b > 1),
            **_on(r, unshifted=True),
        },
        "batch sizes > 1, informative and unshifted targets",
        ("sorted", "i.i.d."),
    ),
    Rule(
        "tent_dirichlet_below_source",
        "TENT on a temporally correlated (Dirichlet) stream falls below the source model",
        "Gong et al. 2022 (NOTE: 76.4 vs 42.3% error); Yuan et al. 2023 (RoTTA)",
        "less",
        "zero",
        lambda r: {**_tt("tent", stream="dirichlet"), **_on(r, unshifted=True)},
        lambda r: {**_tt("source"), **_on(r, unshifted=True)},
        "informative and unshifted targets",
        ("tent (dirichlet)", "source"),
    ),
    Rule(
        "adapt_survives_dirichlet",
        "slowly updated running statistics > test-batch statistics on a Dirichlet stream",
        "Yuan et al. 2023 (RoTTA robust BN); Gong et al. 2022 (NOTE)",
        "greater",
        "zero",
        lambda r: {
            **_tt("adapt", stream="dirichlet", batch_size=lambda b: b > 1),
            **_on(r, unshifted=True),
        },
        lambda r: {
            **_tt("test_batch", stream="dirichlet", batch_size=lambda b: b > 1),
            **_on(r, unshifted=True),
        },
        "batch sizes > 1, informative and unshifted targets",
        ("adapt", "test_batch"),
    ),
    Rule(
        "tent_long_degrades",
        "TENT degrades over a long stream (last pass < one pass)",
        "TENT issue #7; Press et al. 2023 (RDumb)",
        "less",
        "zero",
        lambda r: {**_tt("tent_long"), **_stress(r)},
        lambda r: {**_tt("tent", stream="iid"), **_stress(r)},
        "stress shifts, last pass of the long stream",
        ("tent_long", "tent"),
    ),
    Rule(
        "reset_helps",
        "a periodic reset keeps TENT at or above its unreset long run",
        "Press et al. 2023 (RDumb)",
        "not_worse",
        "non_inferiority",
        lambda r: {**_tt("tent_reset"), **_stress(r)},
        lambda r: {**_tt("tent_long"), **_stress(r)},
        "stress shifts, last pass of the long stream",
        ("tent_reset", "tent_long"),
    ),
    Rule(
        "rotation_control",
        "on rotation, adapting statistics brings little (within ±5 points)",
        "mechanism: rotation keeps pixel statistics (MNIST-C's geometric corruptions)",
        "within",
        "big",
        lambda r: {**_tt("adabn", n=0), **_rotation(r)},
        lambda r: {**_tt("source"), **_rotation(r)},
        "rotation, informative severities",
        ("adabn", "source"),
    ),
    Rule(
        "frozen_small_batch",
        "frozen statistics ≥ trainable BN when fine-tuning at the "
        "smallest batch size without a shift",
        "Wu & He 2018 (GroupNorm, small-batch BN); detectron2's FrozenBN default",
        "not_worse",
        "non_inferiority",
        lambda r: _ft(r, "frozen_stats", False, True),
        lambda r: _ft(r, "pytorch", False, True),
        "no shift, smallest batch, tuned lr",
        ("frozen_stats", "pytorch"),
    ),
    Rule(
        "recalibrate_before_finetune",
        "on a shifted target, recalibrated statistics > source statistics when fine-tuning "
        "with frozen statistics (largest batch)",
        "Li et al. 2016 (AdaBN); Keras transfer-learning guide vs its critics",
        "greater",
        "zero",
        lambda r: _ft(r, "adabn_finetune", True, False),
        lambda r: _ft(r, "frozen_stats", True, False),
        "informative shifts, largest batch, tuned lr",
        ("adabn_finetune", "frozen_stats"),
    ),
    Rule(
        "bn_only",
        "training only BN gamma/beta of a random network ≫ chance (above 2× chance)",
        "Frankle et al. 2021",
        "greater",
        "zero",
        lambda r: {"protocol": "bn_only"},
        None,
        "held-out source digits",
        ("BN-only", "2× chance"),
        lambda r: 2 * chance(r),
    ),
)
"""Every rule, in report order."""


def run_checks(results: Results) -> list[dict[str, Any]]:
    """The outcome of every rule on ``results``, fine-tuning rows at their chosen learning
    rates (:func:`~bnkit.study.results.selection.tuned`)."""
    return run_rules(CHECKS, tuned(results))
