"""BatchNorm in real training loops.

* :func:`accumulate` — gradient accumulation: one update of the running statistics per
  optimizer step, none for a skipped step;
* :func:`mask` — padded sequences: statistics over the valid positions only;
* :func:`functional_call` — ``torch.func`` ensembles: updated statistics returned, not written;
* :func:`average_stats` — weight averaging (SWA, EMA): statistics averaged with the weights;
* :func:`distribute_stats` — DDP: running statistics made equal on every rank;
* activation checkpointing needs nothing: a recomputed forward never updates twice.
"""

from bnkit.training.accumulate import Accumulation, accumulate
from bnkit.training.average import average_stats
from bnkit.training.distribute import distribute_stats
from bnkit.training.func import functional_call
from bnkit.training.mask import mask

__all__ = [
    "Accumulation",
    "accumulate",
    "average_stats",
    "distribute_stats",
    "functional_call",
    "mask",
]
