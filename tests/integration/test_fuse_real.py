"""``bnkit.fuse`` on real models in eval(): what folds, why the rest is left, same outputs.

The pairs are found on a forward of the example input (most of these models are not
traceable by torch.fx: keyword arguments, shape-dependent padding, data-dependent branches).
Every fused model must compute what the unfused one does, to float32 rounding, on another
input; the counts pin what folds in each model and why the others are left alone.
"""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from tests.integration.zoo import ZOO, Zoo, built, output

import bnkit

OWN_FORWARD = "its class BatchNormAct2d defines its own forward, which folding would drop"
NOT_AFTER = "no Conv/ConvTranspose/Linear right before it"

# model -> (pairs folded, {start of the reason: BatchNorm layers left for it})
EXPECTED: dict[str, tuple[int, dict[str, int]]] = {
    "torchvision/resnet18": (20, {}),
    "torchvision/mobilenet_v2": (52, {}),
    "timm/resnet18": (20, {}),
    "timm/efficientnet_b0": (0, {OWN_FORWARD: 49}),
    "timm/regnety_002": (0, {OWN_FORWARD: 44}),
    "timm/mobilenetv3_small_100": (0, {OWN_FORWARD: 34}),
    "monai/DenseNet121": (59, {NOT_AFTER: 62}),  # pre-activation: BN -> ReLU -> conv
    "monai/ResNet-2d": (12, {}),
    "monai/ResNet-3d": (12, {}),
    "monai/UNet": (6, {}),
    "monai/EfficientNetBN": (49, {}),
    "transformers/ResNet": (6, {}),
    "transformers/MobileNetV2": (52, {}),  # fx cannot trace its TF-style padding
    "transformers/RegNet": (12, {}),
    "transformers/LeViT": (26, {NOT_AFTER: 1}),  # Linear -> BatchNorm1d on flattened tokens
    "transformers/DETR": (0, {}),  # its frozen BatchNorm is not an nn.BatchNorm
    "pyg/GIN": (3, {}),
    "tabnet/TabNet": (
        8,
        {
            "the output of 'tabnet.encoder.initial_splitter.shared.shared_layers": 6,
            NOT_AFTER: 1,
            "not reached by the forward of the example input": 1,
        },
    ),
}


def _example(zoo: Zoo) -> object:
    args, kwargs = zoo.inputs(torch.Generator().manual_seed(5), zoo.batch)
    if kwargs:
        return kwargs
    return args if len(args) > 1 else args[0]


@pytest.mark.parametrize("zoo", ZOO, ids=str)
def test_fuse_folds_every_foldable_pair_and_keeps_the_outputs(zoo: Zoo) -> None:
    model = copy.deepcopy(built(zoo)).eval()
    example = _example(zoo)
    report = bnkit.convert.fuse_plan(model, example)
    fused = bnkit.fuse(model, example)
    with torch.no_grad():
        want, got = output(model, zoo), output(fused, zoo)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5 * float(want.abs().max()))
    count, reasons = EXPECTED[zoo.name]
    assert len(report.fused) == count
    left = Counter(next((r for r in reasons if why.startswith(r)), why) for _, why in report.left)
    assert left == Counter(reasons)
