"""Stage 2, models: the network, training loops, scores, source models, the user's model."""

from __future__ import annotations

__all__: list[str] = []
