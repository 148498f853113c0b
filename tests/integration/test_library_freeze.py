"""``bnkit.freeze`` against each library's own way of freezing BatchNorm.

timm's ``freeze_batch_norm_2d``, torchvision's ``FrozenBatchNorm2d`` (as a ``norm_layer``) and
DETR's ``replace_batch_norm`` all turn BatchNorm into a fixed affine map computed their own way
(``x * scale + shift``), so they agree with bnkit to rounding, not bit for bit: outputs and
gradients over two train steps and an eval forward agree to float32 tolerance, and no running
statistic moves in either. torchvision's frozen layers load bnkit's frozen exports strictly, and
the other way round.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from tests.integration.runs import Trajectory, trajectory
from tests.integration.zoo import Zoo, bn_modules, built, by_name

import bnkit


def _agree(ours: Trajectory, theirs: Trajectory) -> None:
    for a, b in zip(ours.outputs, theirs.outputs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
    for ga, gb in zip(ours.grads, theirs.grads, strict=True):
        common = [n for n, g in gb.items() if g is not None]
        assert common and all(ga[n] is not None for n in common)
        for n in common:
            scale = float(gb[n].abs().max()) or 1.0  # type: ignore[union-attr]
            torch.testing.assert_close(ga[n], gb[n], rtol=1e-3, atol=1e-4 * scale)
    for buffers in (ours.buffers, theirs.buffers):  # no statistic moved in either
        for name, value in buffers[-1].items():
            if "running_" in name:
                assert torch.equal(value, buffers[0][name]), name


def _frozen_by_bnkit(zoo: Zoo) -> Trajectory:
    return trajectory(bnkit.freeze(copy.deepcopy(built(zoo))), zoo)


TIMM = [
    by_name(n)
    for n in (
        "timm/resnet18",
        "timm/efficientnet_b0",
        "timm/regnety_002",
        "timm/mobilenetv3_small_100",
    )
]


@pytest.mark.parametrize("zoo", TIMM, ids=str)
def test_freeze_matches_timm_freeze_batch_norm_2d(zoo: Zoo) -> None:
    from timm.layers import freeze_batch_norm_2d

    theirs = freeze_batch_norm_2d(copy.deepcopy(built(zoo)))
    assert not bn_modules(theirs)
    _agree(_frozen_by_bnkit(zoo), trajectory(theirs, zoo))


def _torchvision_frozen(zoo: Zoo) -> nn.Module:
    from torchvision.models import mobilenet_v2, resnet18
    from torchvision.ops.misc import FrozenBatchNorm2d

    if zoo.name == "torchvision/resnet18":
        model: nn.Module = resnet18(num_classes=10, norm_layer=FrozenBatchNorm2d)
    else:
        model = mobilenet_v2(num_classes=10, width_mult=0.5, norm_layer=FrozenBatchNorm2d)
    model.load_state_dict(built(zoo).state_dict(), strict=True)
    return model


TORCHVISION = [by_name("torchvision/resnet18"), by_name("torchvision/mobilenet_v2")]


@pytest.mark.parametrize("zoo", TORCHVISION, ids=str)
def test_freeze_matches_torchvision_frozen_batchnorm(zoo: Zoo) -> None:
    theirs = _torchvision_frozen(zoo)
    _agree(_frozen_by_bnkit(zoo), trajectory(theirs, zoo))


@pytest.mark.parametrize("zoo", TORCHVISION, ids=str)
def test_frozen_exports_load_torchvision_frozen_state_dicts_both_ways(zoo: Zoo) -> None:
    ours = bnkit.to_frozen(copy.deepcopy(built(zoo)))
    theirs = _torchvision_frozen(zoo)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert ours.state_dict().keys() == theirs.state_dict().keys()


@pytest.mark.parametrize("zoo", [by_name("transformers/ResNet"), by_name("transformers/RegNet")])
def test_freeze_matches_detr_replace_batch_norm(zoo: Zoo) -> None:
    from transformers.models.detr.modeling_detr import replace_batch_norm

    theirs = copy.deepcopy(built(zoo))
    with torch.no_grad():
        replace_batch_norm(theirs)
    assert not bn_modules(theirs)
    _agree(_frozen_by_bnkit(zoo), trajectory(theirs, zoo))
