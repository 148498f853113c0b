"""``torch.func`` with managed models: a functional call that returns the updated statistics.

``torch.func.functional_call`` runs a model with the parameters and buffers it is given; under
``vmap`` (ensembles of stacked members, per-sample gradients) the policies that never write
buffers (``frozen``, ``frozen_stats``, ``batch_stats``, ``prior``) work as they are. For the
policies that update running statistics, :func:`functional_call` gives each call its own copy
of the buffers and returns them updated, instead of writing the ones it was given; under
``vmap`` that is one updated copy per member.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["functional_call"]


def functional_call(
    model: nn.Module,
    parameters_and_buffers: Mapping[str, Tensor],
    args: Any = (),
    kwargs: Mapping[str, Any] | None = None,
) -> tuple[Any, dict[str, Tensor]]:
    """``torch.func.functional_call`` that leaves the given buffers alone and returns new ones.

    Returns ``(output, buffers)``: the model's output, and every buffer of the model after the
    call (those given, updated on copies, and those not given, as the model holds them).

    Examples:
        >>> import torch, torch.nn as nn, bnkit
        >>> model = bnkit.apply(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), "pytorch")
        >>> state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        >>> out, new = bnkit.training.functional_call(model, state, (torch.randn(8, 3),))
        >>> int(new["1.num_batches_tracked"]), int(state["1.num_batches_tracked"])
        (1, 0)
    """
    buffer_names = {name for name, _ in model.named_buffers()}
    given = dict(parameters_and_buffers)
    copies = {k: v.clone() for k, v in given.items() if k in buffer_names}
    out = torch.func.functional_call(model, {**given, **copies}, args, dict(kwargs or {}))
    buffers = {name: copies.get(name, b) for name, b in model.named_buffers()}
    return out, buffers
