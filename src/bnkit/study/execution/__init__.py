"""Stage 4, execution: benches, the grid, cell identity and store, computing cells, executors."""

from __future__ import annotations

__all__: list[str] = []
