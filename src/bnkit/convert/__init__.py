"""Conversions between BatchNorm forms: fused, frozen exports, synchronized.

* :func:`fuse` folds fixed BatchNorm layers into the Conv/Linear layer before them;
* :func:`to_frozen` / :func:`from_frozen` swap layers for torchvision-style frozen exports
  and back, losslessly;
* :func:`to_sync` / :func:`from_sync` make layers synchronize across processes and back,
  keeping policies and subclass behaviour.
"""

from bnkit.convert.frozen import (
    FrozenBatchNorm,
    FrozenBatchNorm1d,
    FrozenBatchNorm2d,
    FrozenBatchNorm3d,
    from_frozen,
    to_frozen,
)
from bnkit.convert.fuse import FuseReport, fuse, fuse_plan
from bnkit.convert.sync import from_sync, to_sync

__all__ = [
    "FrozenBatchNorm",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "FrozenBatchNorm3d",
    "FuseReport",
    "from_frozen",
    "from_sync",
    "fuse",
    "fuse_plan",
    "to_frozen",
    "to_sync",
]
