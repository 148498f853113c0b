r"""Folding a BatchNorm layer into the Conv/ConvTranspose/Linear layer before it.

In ``eval()`` with running statistics a BatchNorm layer is the per-channel affine map

.. math::

    y = s \odot x + t, \qquad s = \frac{\gamma}{\sqrt{\hat\sigma^2 + \epsilon}}, \qquad
    t = \beta - s \odot \hat\mu

so after a layer :math:`x = W * u + b` it folds into :math:`W' = s \odot W` (scaling each
output channel) and :math:`b' = s \odot b + t`. The fold is computed in float64 and rounded
once to the layer's dtype. For a transposed convolution the output channels are dimension 1
of the weight, within each group: ``(in, out / groups, *kernel)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["FOLDABLE", "fold", "out_features", "scale_shift"]

FOLDABLE: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)


def out_features(layer: nn.Module) -> int:
    """Output channels of a foldable layer."""
    if isinstance(layer, nn.Linear):
        return layer.out_features
    assert isinstance(layer, nn.modules.conv._ConvNd)
    return layer.out_channels


def scale_shift(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """The float64 ``(s, t)`` of a BatchNorm layer normalizing with its running statistics."""
    mean = bn.running_mean
    var = bn.running_var
    assert isinstance(mean, Tensor)
    assert isinstance(var, Tensor)
    mean64, var64 = mean.detach().double(), var.detach().double()
    weight, bias = getattr(bn, "weight", None), getattr(bn, "bias", None)
    gamma = torch.ones_like(mean64) if weight is None else weight.detach().double()
    beta = torch.zeros_like(mean64) if bias is None else bias.detach().double()
    scale = gamma / torch.sqrt(var64 + float(getattr(bn, "eps", 1e-5)))
    return scale, beta - mean64 * scale


def fold(layer: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn`` into ``layer`` in place: new ``weight`` and ``bias`` Parameters.

    The new parameters keep ``layer.weight.requires_grad`` (as torch's own fusion does).
    """
    weight = layer.weight
    assert isinstance(weight, Tensor)
    scale, shift = scale_shift(bn)
    w = weight.detach().double()
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        groups = layer.groups
        grouped = w.reshape(groups, w.shape[0] // groups, w.shape[1], *w.shape[2:])
        per_out = scale.reshape(groups, 1, w.shape[1], *([1] * (w.dim() - 2)))
        w = (grouped * per_out).reshape(w.shape)
    else:
        w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
    old_bias = getattr(layer, "bias", None)
    b = old_bias.detach().double() if isinstance(old_bias, Tensor) else torch.zeros_like(scale)
    grad = weight.requires_grad
    layer.weight = nn.Parameter(w.to(weight.dtype), requires_grad=grad)
    layer.bias = nn.Parameter((b * scale + shift).to(weight.dtype), requires_grad=grad)
