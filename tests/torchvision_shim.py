"""Make torchvision (and timm, Lightning, the transformers Trainer) importable with CPU torch.

The torchvision wheels available here are CUDA builds whose C++ operators do not load with the
CPU build of torch, so ``import torchvision`` fails until the schemas of the two operators its
Python code registers fakes for exist. Defining them first is enough; the operators themselves
stay unavailable, and no test needs them. Test-only: bnkit never imports these libraries.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["install"]

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
# Kept alive for the whole session: a Library object removes its definitions when collected.
_LIBRARY: list[torch.library.Library] = []


def install() -> None:
    """Define the two schemas once (a no-op where torchvision's operators loaded)."""
    if _LIBRARY:
        return
    library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        with contextlib.suppress(RuntimeError):  # already defined: the real operators loaded
            library.define(schema)
    _LIBRARY.append(library)
