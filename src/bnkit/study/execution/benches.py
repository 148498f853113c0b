"""One bench per process and spec: the built-in one, or the user's."""

from __future__ import annotations

from bnkit.study.execution.bench import Bench, BenchSpec
from bnkit.study.execution.user_bench import UserBench

__all__ = ["make_bench"]

_BENCHES: dict[BenchSpec, Bench] = {}


def make_bench(spec: BenchSpec) -> Bench:
    """The bench for ``spec`` (built once per process and spec, then reused)."""
    if spec not in _BENCHES:
        _BENCHES[spec] = Bench(spec) if spec.user is None else UserBench(spec)
    return _BENCHES[spec]
