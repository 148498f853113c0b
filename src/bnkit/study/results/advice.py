"""The "what to do" section, every sentence computed from this run's rows.

Each sentence compares strategies by their paired differences with a confidence interval and
says "better", "worse" or "no detectable difference" from that interval, never from the means
alone. The study refuses to advise, and says why, when a source model is near chance on its
held-out source images (nothing it does under a shift means anything) or when no target hurts
the source model (there is no shift to act on).
"""

from __future__ import annotations

from typing import Any

from bnkit.study.results.results import Results
from bnkit.study.results.selection import (
    calibration,
    chance,
    informative_shifts,
    sweep,
    tuned,
)
from bnkit.study.results.stats import Summary, summarize

__all__ = ["NEAR_CHANCE", "advice", "refusal"]

NEAR_CHANCE = 0.5
"""A source model whose held-out accuracy is not above chance + this share of the way from
chance to 100% (55% for 10 classes) is too weak for advice."""


def _verb(d: Summary) -> str:
    if d.n < 2 or d.ci != d.ci:
        return f"could not be compared ({d.n} seed)"
    if d.low > 0:
        return f"was better by {d.signed()} points"
    if d.high < 0:
        return f"was worse by {d.signed()} points"
    return f"showed no detectable difference ({d.signed()} points)"


def refusal(r: Results) -> str | None:
    """Why the study gives no advice for this run, or None."""
    floor = chance(r) + NEAR_CHANCE * (1 - chance(r))
    by_source: dict[str, list[float]] = {}
    for m in r.meta.get("source_models", []):
        if m["model"] == "bn":
            by_source.setdefault(str(m.get("source", "")), []).append(float(m["val_accuracy"]))
    for name, values in by_source.items():
        s = summarize(values, r.level)
        if s.mean < floor:
            return (
                f"**No advice:** the source model ({name}) scored {s.percent()}% on held-out "
                f"source images, near chance ({100 * chance(r):.0f}%; advice needs more than "
                f"{100 * floor:.0f}%). Train it longer or give a checkpoint that has learned "
                "the source task; what a strategy does to a model that has not learned "
                "anything says nothing."
            )
    targets = [t for t in calibration(r) if t.status != "reference"]
    if targets and not informative_shifts(r):
        drops = ", ".join(f"{t.shift} {t.drop.signed()}" for t in targets[:6])
        return (
            "**No advice:** no target hurts the source model (accuracy change against held-out "
            f"source images: {drops} points), or it is at chance there; with no shift to act "
            "on, no strategy can be recommended."
        )
    return None


def _tt(strategy: str, **more: Any) -> dict[str, Any]:
    return {"protocol": "test_time", "model": "bn", "strategy": strategy, **more}


def _on(r: Results, unshifted: bool = False) -> dict[str, Any]:
    keep = informative_shifts(r) | ({"none"} if unshifted else set())
    return {"shift": lambda s: s in keep, **sweep(r)}


def _no_labels(r: Results) -> list[str]:
    big = max(r.config["test_time"]["batch_sizes"])
    arms = [
        ("AdaBN (recalibrate on the target pool)", _tt("adabn", n=0)),
        (f"test-batch statistics (batch {big})", _tt("test_batch", batch_size=big, stream="iid")),
        (f"prior mixing (batch {big})", _tt("prior", batch_size=big, stream="iid")),
        (
            f"slow running statistics, adapt (batch {big})",
            _tt("adapt", batch_size=big, stream="iid"),
        ),
        ("TENT", _tt("tent", stream="iid")),
    ]
    base = {**_tt("source"), **_on(r)}
    gains = [(label, sel, r.paired({**sel, **_on(r)}, base)) for label, sel in arms]
    gains = [g for g in gains if g[2].n >= 2]
    if not gains:
        return []
    gains.sort(key=lambda g: -g[2].mean)
    best, rest = gains[0], gains[1:]
    text = (
        f"**No target labels** (i.i.d. stream, shifts that hurt the source model): compared "
        f"with the source statistics, {best[0]} {_verb(best[2])}"
    )
    if rest:
        d = r.paired({**best[1], **_on(r)}, {**rest[0][1], **_on(r)})
        text += f"; against the runner-up, {rest[0][0]}, it {_verb(d)}"
    others = "; ".join(f"{label} {_verb(d)}" for label, _, d in rest[1:])
    return [text + (f". The others against the source statistics: {others}." if others else ".")]


def _small_batches(r: Results) -> list[str]:
    small = min(r.config["test_time"]["batch_sizes"])
    base = {**_tt("source"), **_on(r, True)}
    parts = []
    for name, label in (
        ("test_batch", "test-batch statistics"),
        ("prior", "prior mixing"),
        ("adapt", "slow running statistics (adapt)"),
    ):
        d = r.paired({**_tt(name, batch_size=small, stream="iid"), **_on(r, True)}, base)
        if d.n >= 2:
            parts.append(f"{label} {_verb(d)}")
    if not parts:
        return []
    return [f"**Batches of {small}** (against the source statistics): " + "; ".join(parts) + "."]


def _streams(r: Results) -> list[str]:
    out = []
    for stream, label in (("sorted", "label-sorted"), ("dirichlet", "temporally correlated")):
        parts = []
        base = {**_tt("source"), **_on(r, True)}
        for name in ("test_batch", "prior", "adapt", "tent"):
            sel = {**_tt(name, stream=stream, batch_size=lambda b: b > 1), **_on(r, True)}
            d = r.paired(sel, base)
            if d.n >= 2:
                parts.append(f"{name} {_verb(d)}")
        if parts:
            out.append(
                f"**{label.capitalize()} streams** (batches > 1, against the source "
                f"statistics): " + "; ".join(parts) + "."
            )
    long = r.paired({**_tt("tent_long"), **_on(r)}, {**_tt("tent", stream="iid"), **_on(r)})
    reset = r.paired({**_tt("tent_reset"), **_on(r)}, {**_tt("tent_long"), **_on(r)})
    if long.n >= 2:
        n = r.config["test_time"]["stress_images"]
        text = f"**A long stream** ({n} images): TENT's last pass, against one pass, {_verb(long)}"
        if reset.n >= 2:
            text += f"; a periodic reset, against no reset, {_verb(reset)}"
        out.append(text + ".")
    return out


def _finetune(r: Results) -> list[str]:
    t = tuned(r)
    sizes = sorted({int(b) for b in r.config["finetune"]["batch_sizes"]})
    out = []
    good = informative_shifts(r) - {"none"}
    for shifted, label in ((True, "on a shifted target"), (False, "without a shift")):
        shift: Any = (lambda s: s in good) if shifted else "none"
        for bs in sizes:
            base = {"protocol": "finetune", "model": "bn", "batch_size": bs, "shift": shift}
            ranked = []
            for name in r.config["finetune"]["strategies"]:
                s = t.summary(**base, strategy=name)
                if s.n >= 2:
                    ranked.append((s.mean, name, s))
            if len(ranked) < 2:
                continue
            ranked.sort(reverse=True)
            (_, first, s1), (_, second, _) = ranked[0], ranked[1]
            other = "pytorch" if first != "pytorch" else second
            d = t.paired({**base, "strategy": first}, {**base, "strategy": other})
            out.append(
                f"**A few labels, {label}, batch {bs}** (each strategy at its learning rate "
                f"chosen on the validation split): {first} scored best ({s1.percent()}%); "
                f"against {'plain fine-tuning (pytorch)' if other == 'pytorch' else other} it "
                f"{_verb(d)}."
            )
    return out


def _excluded(r: Results) -> list[str]:
    left = [t for t in calibration(r) if t.status in ("does not hurt", "at chance")]
    if not left:
        return []
    items = ", ".join(f"{t.shift} {t.severity} ({t.status}: {t.drop.signed()})" for t in left)
    return [f"**Left out of the verdicts:** {items} points against held-out source accuracy."]


def advice(r: Results) -> list[str]:
    """The summary, as a list of Markdown paragraphs (or the reason there is none)."""
    why = refusal(r)
    if why is not None:
        return [why]
    return [*_no_labels(r), *_small_batches(r), *_streams(r), *_finetune(r), *_excluded(r)]
