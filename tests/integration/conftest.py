"""Integration tests on real model zoos, built offline from their own constructors.

torchvision's wheels here are CUDA builds whose C++ operators do not load with CPU torch, so
``import torchvision`` (and with it timm) fails until the schemas of the two operators its
Python code registers fakes for exist. Defining them before the first import is enough; the
operators themselves stay unavailable, and no test here needs them.
"""

from __future__ import annotations

import contextlib

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
# Kept alive for the whole session: a Library object removes its definitions when collected.
_TORCHVISION_SHIM = torch.library.Library("torchvision", "FRAGMENT")
for _schema in _SCHEMAS:
    with contextlib.suppress(RuntimeError):  # already defined: torchvision's operators loaded
        _TORCHVISION_SHIM.define(_schema)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """One thread: much faster than two for these small models on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
