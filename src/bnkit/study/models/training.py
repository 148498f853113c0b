"""Training and prediction loops shared by pretraining, fine-tuning and the BN-only check.

Batches are drawn without Python per-sample work: indices come from concatenated random
permutations of the training set (a new permutation once one is used up), so a run of ``steps``
batches sees every sample equally often and depends only on its generator. The learning rate
rises linearly over the warmup steps, then stays constant or decays along a cosine to 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import bnkit
from bnkit.study.data.feed import Images, gathered, in_batches, length

__all__ = ["batches", "fit", "lr_at", "only_bn_affine", "predict"]


def only_bn_affine(model: nn.Module) -> list[nn.Parameter]:
    """Make gamma/beta of every BatchNorm layer the only trainable parameters; return them."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = [
        p
        for _, layer in bnkit.bn_layers(model)
        for p in (getattr(layer, "weight", None), getattr(layer, "bias", None))
        if isinstance(p, nn.Parameter)
    ]
    for p in params:
        p.requires_grad_(True)
    return params


def batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> list[Tensor]:
    """``steps`` index batches of ``batch_size`` over ``range(n)``, epoch by epoch."""
    per_epoch = max(1, n // batch_size) if batch_size <= n else 1
    epochs = math.ceil(steps / per_epoch)
    out: list[Tensor] = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator)
        if batch_size > n:
            out.append(perm)
            continue
        out.extend(perm[i * batch_size : (i + 1) * batch_size] for i in range(per_epoch))
    return out[:steps]


def lr_at(step: int, lr: float, steps: int, warmup: int, schedule: str) -> float:
    """The learning rate of step ``step`` (0-based): linear warmup, then constant or cosine."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "cosine":
        span = max(1, steps - warmup)
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / span))
    return lr


def fit(
    model: nn.Module,
    x: Images,
    y: Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    params: Iterable[nn.Parameter] | None = None,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    warmup: int = 0,
    schedule: str = "constant",
    every: int = 0,
    on_eval: Callable[[int], bool] | None = None,
) -> None:
    """Train ``model`` (in ``train()`` mode) by SGD with momentum on cross-entropy.

    Args:
        model: the classifier; its BatchNorm layers behave as their policies say.
        x, y: the training images (a tensor on the model's device, or streamed image files)
            and labels (on the model's device).
        steps: optimizer steps.
        batch_size: samples per step (the whole set when larger than it).
        lr: peak learning rate.
        generator: the random source of the batch order.
        params: the parameters to train; default all with ``requires_grad``.
        momentum, weight_decay: SGD settings.
        warmup: steps of linear warmup.
        schedule: ``"constant"`` or ``"cosine"`` (decay to 0 after the warmup).
        every, on_eval: call ``on_eval(step)`` after every ``every`` steps (with the model in
            ``eval()`` mode; training resumes in ``train()``); training stops early when it
            returns False.
    """
    trainable = [
        p for p in (params if params is not None else model.parameters()) if p.requires_grad
    ]
    opt = torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    order = batches(int(y.shape[0]), batch_size, steps, generator)
    for i, (idx, xb) in enumerate(zip(order, gathered(x, order), strict=True)):
        for group in opt.param_groups:
            group["lr"] = lr_at(i, lr, steps, warmup, schedule)
        loss = F.cross_entropy(model(xb), y[idx.to(y.device)])
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        if on_eval is not None and every and (i + 1) % every == 0:
            model.eval()
            go_on = on_eval(i + 1)
            model.train()
            if not go_on:
                break
    model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: Images, batch_size: int = 512) -> Tensor:
    """Logits of ``model`` in ``eval()`` mode over ``x``, in batches (CPU float tensor)."""
    model.eval()
    parts = [model(xb).float().cpu() for xb in in_batches(x, batch_size)]
    if not parts:
        return torch.empty(length(x), 0)
    return torch.cat(parts)
