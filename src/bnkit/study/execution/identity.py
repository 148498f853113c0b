"""A cell's identity: one key computed from everything that decides its numbers.

:func:`cell_key` hashes the cell's coordinates with its context: the bnkit and torch versions,
the device kind, the image size, the settings of its protocol, and what its bench says about
the cell's data (data set names and digests, a folder's listing hash, a factory's name and
sizes) and source model (factory, digest of its initial weights, checkpoint digest). Two runs
that agree on all of it compute the same numbers; a run that differs in any of it never reuses
the other's row. The store keeps the whole identity next to each row and compares it on
resume, so a hash collision cannot pass either.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from bnkit import __version__
from bnkit.study.execution.cells import Cell

__all__ = ["cell_identity", "cell_key", "run_identity"]


def run_identity(device: str, image_size: int) -> dict[str, Any]:
    """What every cell of a run shares: versions, device kind and image size."""
    return {
        "bnkit": __version__,
        "torch": torch.__version__,
        "device": device.split(":")[0],
        "image_size": image_size,
    }


def cell_identity(
    cell: Cell, run: dict[str, Any], settings: dict[str, Any], context: dict[str, Any]
) -> dict[str, Any]:
    """Everything that decides ``cell``'s numbers, as plain JSON data."""
    out: dict[str, Any] = json.loads(
        json.dumps(
            {"cell": cell.fields(), "run": run, "settings": settings, "context": context},
            sort_keys=True,
        )
    )
    return out


def cell_key(identity: dict[str, Any]) -> str:
    """The key (20 hex digits) of a cell with that identity."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]
