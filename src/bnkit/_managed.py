"""Kept so that models pickled by bnkit 0.1 load (they name ``bnkit._managed._rebuild``)."""

from bnkit.layers.managed import _rebuild

__all__ = ["_rebuild"]
