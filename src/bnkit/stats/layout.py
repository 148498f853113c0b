"""Run a recalibration pass in channels-last memory format on CPU.

BatchNorm's statistics kernels and oneDNN convolutions are markedly faster on channels-last
tensors on CPU (1.3x for a small ResNet here). The pass only reads statistics, so its layout is
free to choose: 4D parameters are switched for the pass (the original tensors are put back
afterwards, bit for bit) and 4D input tensors are converted on the way in. A model whose forward
needs the default layout (``.view`` on a convolution's output, say) falls back on its first
batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["ChannelsLast", "wants_channels_last"]


def wants_channels_last(model: nn.Module, device: torch.device | None) -> bool:
    """Whether a pass would gain from channels-last: a CPU model with 4D (conv) weights."""
    if device is not None and device.type != "cpu":
        return False
    return any(
        p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last)
        for p in model.parameters()
    )


class ChannelsLast:
    """While active, 4D parameters are channels-last; :meth:`batch` converts 4D inputs."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.active = False
        self._saved: list[tuple[nn.Parameter, Tensor]] = []

    def __enter__(self) -> ChannelsLast:
        with torch.no_grad():
            for p in self.model.parameters():
                if p.dim() == 4:
                    self._saved.append((p, p.data))
                    p.data = p.data.contiguous(memory_format=torch.channels_last)
        self.active = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.undo()

    def undo(self) -> None:
        """Put the original parameter tensors back (idempotent)."""
        for p, original in self._saved:
            p.data = original
        self._saved.clear()
        self.active = False

    def batch(self, batch: Any) -> Any:
        """The batch with every 4D floating-point tensor in channels-last format."""
        if not self.active:
            return batch
        if isinstance(batch, Tensor):
            if batch.dim() == 4 and batch.is_floating_point():
                return batch.contiguous(memory_format=torch.channels_last)
            return batch
        if isinstance(batch, Mapping):
            return {k: self.batch(v) for k, v in batch.items()}
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.batch(v) for v in batch)
        return batch
