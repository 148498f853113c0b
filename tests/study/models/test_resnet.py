"""The study's network and its GroupNorm twin."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bnkit import bn_layers
from bnkit.study.models.resnet import build_model, norm_layer


@pytest.mark.parametrize("norm", ["bn", "gn"])
@pytest.mark.parametrize(("channels", "size"), [(1, 16), (3, 8), (1, 12)])
def test_logits_shape_for_both_norms(norm: str, channels: int, size: int) -> None:
    model = build_model(norm, in_channels=channels, num_classes=7, width=8)
    assert model(torch.rand(5, channels, size, size)).shape == (5, 7)


def test_the_twins_differ_only_in_their_normalization() -> None:
    bn, gn = build_model("bn"), build_model("gn")
    assert len(list(bn_layers(bn))) == 9
    assert not list(bn_layers(gn))
    assert sum(isinstance(m, nn.GroupNorm) for m in gn.modules()) == 9
    convs = lambda m: [tuple(c.weight.shape) for c in m.modules() if isinstance(c, nn.Conv2d)]  # noqa: E731
    assert convs(bn) == convs(gn)
    groups = [m.num_groups for m in gn.modules() if isinstance(m, nn.GroupNorm)]
    assert groups[0] == 4  # 16 channels in groups of 4


def test_unknown_norm() -> None:
    with pytest.raises(ValueError, match="norm must be one of"):
        norm_layer("ln")
