"""The study's public entry point: run a grid, get :class:`Results` (rows, facts, verdicts).

:func:`run` executes the grid (:mod:`bnkit.study.execution`), then turns the rows into results
and evaluates the directional checks (:mod:`bnkit.study.results`); rendering the report is a
separate step (:func:`bnkit.study.results.report.render`).
"""

from __future__ import annotations

from pathlib import Path

from bnkit.study.config.settings import StudyConfig
from bnkit.study.execution.bench import UserSpec
from bnkit.study.execution.runner import execute
from bnkit.study.results.checks import run_checks
from bnkit.study.results.results import Results

__all__ = ["run"]


def run(
    config: StudyConfig | None = None,
    *,
    out: str | Path = "bnkit-study",
    workers: int | None = None,
    threads: int | None = None,
    device: str = "auto",
    cache: str | Path | None = None,
    user: UserSpec | None = None,
    progress: bool = True,
) -> Results:
    """Run the study (or finish an interrupted one) and return its results.

    Args:
        config: the grid; the default benchmark if None.
        out: the output folder (cells, results, cache by default); reused to resume.
        workers: processes to spread tasks over; default one per usable core on CPU (at most
            8), one on a GPU.
        threads: torch threads per worker (default 1: small models run best so).
        device: "auto", "cpu" or "cuda".
        cache: where source models are cached; default ``out/cache``.
        user: the user's own data (and model) instead of the built-in benchmark.
        progress: progress bars on stderr.

    Returns:
        :class:`~bnkit.study.results.results.Results` (also written to ``out/results.json``
        and ``out/results.csv``).

    Raises:
        StudyError: a bad setting, output folder, model or data, found before any work.
    """
    config = config or StudyConfig.default()
    out = Path(out)
    rows, meta = execute(
        config,
        out=out,
        workers=workers,
        threads=threads,
        device=device,
        cache=Path(cache) if cache else None,
        user=user,
        progress=progress,
    )
    results = Results(rows, config.to_dict(), meta)
    results.checks = run_checks(results)
    results.save(out)
    return results
