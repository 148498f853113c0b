"""Calibration of targets and the choice of fine-tuning learning rates, on hand-made rows."""

from __future__ import annotations

from tests.study.results.world import results, universe

from bnkit.study.results.selection import calibration, informative_shifts, tuned


def test_every_shift_that_hurts_the_source_model_informs_the_verdicts() -> None:
    r = results(universe())
    status = {t.shift: t.status for t in calibration(r)}
    assert status == {
        "none": "reference", "contrast": "informative", "gaussian_noise": "informative",
        "rotation": "informative", "mnist_to_digits": "informative",
    }  # fmt: skip
    assert informative_shifts(r) == {"contrast", "gaussian_noise", "rotation", "mnist_to_digits"}


def test_a_shift_that_does_not_hurt_or_destroys_the_task_is_left_out() -> None:
    rows = universe()
    for row in rows:
        if (
            row["strategy"] == "source"
            and row["model"] == "bn"
            and row["shift"] == "gaussian_noise"
        ):
            row["accuracy"] = 0.98 - 0.01 * row["seed"]  # within noise of held-out 99%
        if row["protocol"] == "test_time" and row["shift"] == "rotation":
            row["accuracy"] = 0.1 + 0.005 * row["seed"]  # every strategy at chance (10 classes)
    status = {t.shift: t.status for t in calibration(results(rows))}
    assert status["gaussian_noise"] == "does not hurt" and status["rotation"] == "at chance"
    assert status["contrast"] == "informative"


def test_a_source_model_at_chance_that_adaptation_recovers_stays_informative() -> None:
    """Regression: contrast 5 (source 11%, AdaBN 89%) was left out as "at chance"."""
    rows = universe()
    for row in rows:
        if row["protocol"] == "test_time" and row["shift"] == "contrast":
            row["accuracy"] = 0.89 if row["strategy"] == "adabn" else 0.1 + 0.005 * row["seed"]
    status = {t.shift: t.status for t in calibration(results(rows))}
    assert status["contrast"] == "informative"


def test_one_seed_gives_no_calibration() -> None:
    r = results(universe(1), seeds=1)
    assert {t.status for t in calibration(r)} == {"reference", "NOT RUN"}
    assert informative_shifts(r) == set()


def test_the_learning_rate_is_chosen_on_validation_never_on_test() -> None:
    rows = []
    for row in universe():
        if row["protocol"] == "finetune" and row["strategy"] == "pytorch":
            for lr, val, test in ((1e-3, 0.9, 0.2), (1e-2, 0.5, 0.95)):
                rows.append({**row, "lr": lr, "val_accuracy": val, "accuracy": test})
        else:
            rows.append(row)
    t = tuned(results(rows))
    kept = t.select(protocol="finetune", strategy="pytorch")
    assert kept and {r["lr"] for r in kept} == {1e-3}  # best validation, not best test
    assert {c["lr"] for c in t.meta["chosen_lr"] if c["strategy"] == "pytorch"} == {1e-3}
    assert len(t.select(protocol="test_time")) == len(results(rows).select(protocol="test_time"))
