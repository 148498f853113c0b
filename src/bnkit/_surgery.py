"""Kept so that models pickled by bnkit 0.1 load (they name ``bnkit._surgery.LayerState``)."""

from bnkit.layers.legacy import LayerState

__all__ = ["LayerState"]
