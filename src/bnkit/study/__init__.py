"""``bnkit study``: which BatchNorm strategy wins under a domain shift, measured.

Needs the ``study`` extra (``pip install 'bnkit[study]'``: numpy, scikit-learn, scipy,
matplotlib, pillow, tqdm); ``import bnkit`` never imports this package.

Running the quick grid from Python (a minute or two on 2 CPU cores)::

    import bnkit.study as study

    results = study.run(study.StudyConfig.quick(), out="bnkit-study")
    study.render(results, "bnkit-study")     # report.md, report.html, plots/
    results.summary(strategy="adabn", family="photometric")   # mean ± 95% CI over seeds
"""

from __future__ import annotations

from bnkit.study._deps import require_extra

require_extra()

from bnkit.study.bench import UserSpec  # noqa: E402
from bnkit.study.config import (  # noqa: E402
    AdaptConfig,
    BnOnlyConfig,
    FineTuneConfig,
    PretrainConfig,
    StudyConfig,
)
from bnkit.study.report import render  # noqa: E402
from bnkit.study.results import Results  # noqa: E402
from bnkit.study.runner import run  # noqa: E402

__all__ = [
    "AdaptConfig",
    "BnOnlyConfig",
    "FineTuneConfig",
    "PretrainConfig",
    "Results",
    "StudyConfig",
    "UserSpec",
    "render",
    "run",
]
