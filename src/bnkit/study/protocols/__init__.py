"""Stage 3, protocols: what each strategy does (test time, fine-tuning, BN-only)."""

from __future__ import annotations

__all__: list[str] = []
