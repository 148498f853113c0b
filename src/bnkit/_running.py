"""Kept so that models pickled by bnkit 0.1 load (they name ``bnkit._running.Plan``)."""

from bnkit.layers.legacy import Plan

__all__ = ["Plan"]
