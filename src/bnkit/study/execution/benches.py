"""One bench per process and run: the built-in one, or the user's."""

from __future__ import annotations

from bnkit.study.execution.bench import Bench, BenchSpec
from bnkit.study.execution.user_bench import UserBench

__all__ = ["make_bench"]

_BENCHES: dict[BenchSpec, Bench] = {}


def make_bench(spec: BenchSpec) -> Bench:
    """The bench for ``spec``: built once per process and run, then reused by its tasks (a
    new run drops the bench of the one before)."""
    if spec not in _BENCHES:
        _BENCHES.clear()
        _BENCHES[spec] = Bench(spec) if spec.user is None else UserBench(spec)
    return _BENCHES[spec]
