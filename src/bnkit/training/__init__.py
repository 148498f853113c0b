"""BatchNorm in real training loops.

* :func:`accumulate` — gradient accumulation: one update of the running statistics per
  optimizer step, none for a skipped step;
* :func:`mask` — padded sequences: statistics over the valid positions only;
* :func:`functional_call` — ``torch.func`` ensembles: updated statistics returned, not written;
* activation checkpointing needs nothing: a recomputed forward never updates twice.
"""

from bnkit.training.accumulate import Accumulation, accumulate
from bnkit.training.func import functional_call
from bnkit.training.mask import mask

__all__ = ["Accumulation", "accumulate", "functional_call", "mask"]
