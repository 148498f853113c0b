"""One bench per process and run: the built-in one, or the user's."""

from __future__ import annotations

from bnkit.study.execution.bench import Bench, BenchSpec
from bnkit.study.execution.user_bench import UserBench

__all__ = ["make_bench"]

_BENCHES: dict[BenchSpec, Bench] = {}


def make_bench(spec: BenchSpec) -> Bench:
    """The bench for ``spec``: built once per process and run, then reused by its tasks (a
    new run drops the bench of the one before). A user's bench completes its spec (the
    normalization computed on the source images); it is found under both."""
    if spec not in _BENCHES:
        _BENCHES.clear()
        bench = Bench(spec) if spec.user is None else UserBench(spec)
        _BENCHES[spec] = _BENCHES[bench.spec] = bench  # also under its completed spec
    return _BENCHES[spec]
