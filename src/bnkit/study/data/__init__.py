"""Stage 1, data: the data sets, synthetic shifts, streams, splits and the user's data."""

from __future__ import annotations

__all__: list[str] = []
