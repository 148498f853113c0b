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
    "timm/efficientnet_b0": (49, {}),  # BatchNormAct2d: its activation stays after the fold
    "timm/regnety_002": (44, {}),
    "timm/mobilenetv3_small_100": (34, {}),
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


def _float64_output(model: torch.nn.Module, zoo: Zoo) -> torch.Tensor | None:
    """The unfused model's output in float64 (None if the model cannot run in float64)."""
    wide = copy.deepcopy(model).double()
    args, kwargs = zoo.inputs(torch.Generator().manual_seed(1), zoo.batch)
    cast = [a.double() if a.is_floating_point() else a for a in args]
    kw = {k: v.double() if v.is_floating_point() else v for k, v in kwargs.items()}
    try:
        return zoo.pick(wide(*cast, **kw)).double()
    except RuntimeError as err:
        if "dtype" not in str(err):
            raise
        return None


@pytest.mark.parametrize("zoo", ZOO, ids=str)
def test_fuse_folds_every_foldable_pair_and_keeps_the_outputs(zoo: Zoo) -> None:
    model = copy.deepcopy(built(zoo)).eval()
    example = _example(zoo)
    report = bnkit.convert.fuse_plan(model, example)
    fused = bnkit.fuse(model, example)
    with torch.no_grad():
        want, got = output(model, zoo), output(fused, zoo)
        # float32 rounding grows through deep random-init nets; folding may reorder it, never add
        # more than rounding: judged against the unfused model run in float64
        exact = _float64_output(model, zoo)
    if exact is None:  # the model makes float32 tensors of its own: judged in float32
        torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5 * float(want.abs().max()))
    else:
        plain_error = float((want.double() - exact).abs().max())
        fused_error = float((got.double() - exact).abs().max())
        scale = 1e-6 * float(exact.abs().max())
        assert fused_error <= 4 * plain_error + scale, (fused_error, plain_error)
    count, reasons = EXPECTED[zoo.name]
    assert len(report.fused) == count
    left = Counter(next((r for r in reasons if why.startswith(r)), why) for _, why in report.left)
    assert left == Counter(reasons)
