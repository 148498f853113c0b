"""The study's settings: what runs, with which values, and how verdicts are decided."""

from __future__ import annotations

from bnkit.study.config.names import REAL, SYNTHETIC
from bnkit.study.config.settings import (
    AdaptConfig,
    BnOnlyConfig,
    FineTuneConfig,
    PretrainConfig,
    StudyConfig,
    VerdictConfig,
)

__all__ = [
    "REAL",
    "SYNTHETIC",
    "AdaptConfig",
    "BnOnlyConfig",
    "FineTuneConfig",
    "PretrainConfig",
    "StudyConfig",
    "VerdictConfig",
]
