""" "What to do": every sentence follows the numbers, and no advice where none is warranted."""

from __future__ import annotations

import copy

from tests.study.results.world import results, universe

from bnkit.study.results.advice import advice, refusal


def set_accuracy(rows: list[dict], value: float, **where: object) -> None:
    """Set the accuracy of the matching rows on the shifted targets (plus seed noise)."""
    for row in rows:
        if row["shift"] != "none" and all(row[k] == v for k, v in where.items()):
            row["accuracy"] = row["val_accuracy"] = value + 0.003 * row["seed"]


def test_no_advice_from_a_source_model_near_chance() -> None:
    """Regression: without a checkpoint the user's model trained ~10 steps, scored 25% (chance
    for 4 classes), and the report gave advice anyway."""
    r = results(universe(), held_out=0.3)
    text = advice(r)
    assert len(text) == 1 and text[0].startswith("**No advice:**")
    assert "near chance" in text[0] and "30.0" in text[0]


def test_no_advice_when_no_shift_hurts_the_source_model() -> None:
    rows = universe()
    for row in rows:
        row["accuracy"] = 0.99 - 0.001 * row["seed"]
    text = advice(results(rows))
    assert len(text) == 1 and "no target hurts the source model" in text[0]


def test_a_sorted_stream_that_measured_better_is_not_advised_against() -> None:
    """Regression: a sorted stream measured +1.0 ± 2.9 points and the report still said
    "avoid"; now the words come from the interval."""
    rows = universe()
    set_accuracy(rows, 0.32, strategy="test_batch", stream="sorted", batch_size=64)
    set_accuracy(rows, 0.32, strategy="test_batch", stream="sorted", batch_size=4)
    text = " ".join(advice(results(rows)))
    assert "**Label-sorted streams**" in text and "test_batch was better by +2" in text
    assert "avoid" not in text.lower()
    worse = copy.deepcopy(rows)
    set_accuracy(worse, 0.1, strategy="test_batch", stream="sorted", batch_size=64)
    set_accuracy(worse, 0.1, strategy="test_batch", stream="sorted", batch_size=4)
    assert "test_batch was worse by -" in " ".join(advice(results(worse)))


def test_equal_strategies_are_no_detectable_difference_and_the_best_is_named_with_its_ci() -> None:
    rows = universe()
    set_accuracy(rows, 0.8, strategy="adabn", n=0)
    first = advice(results(rows))[0]
    assert "AdaBN (recalibrate on the target pool) was better by +50" in first
    rows2 = universe()
    for row in rows2:  # every arm equal to the source statistics, up to noise
        row["accuracy"] += 0.001 * (row["seed"] % 2)
    first2 = advice(results(rows2))[0]
    assert "showed no detectable difference" in first2


def test_every_sentence_is_from_this_run() -> None:
    rows = universe()
    set_accuracy(rows, 0.9, strategy="frozen_stats", protocol="finetune", shift="contrast")
    text = " ".join(advice(results(rows)))
    assert "A few labels, on a shifted target, batch 2" in text
    assert "frozen_stats scored best" in text
    assert refusal(results(rows)) is None
