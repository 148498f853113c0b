"""Every preset on real models: bit for bit the untouched model where PyTorch expresses it.

Two train steps (outputs, gradients, buffers, ``num_batches_tracked``) and one eval forward of
the model under a bnkit preset against the same trajectory of an untouched copy set up the way
plain PyTorch expresses the preset (:data:`tests.integration.runs.NATIVE`). The presets PyTorch
has no kernel for run the same trajectory and must then evaluate exactly as an untouched model
holding the same parameters and statistics does.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tests.integration.runs import NATIVE, assert_same, native_run, trajectory
from tests.integration.zoo import ZOO, Zoo, bn_modules, built, by_name, output

import bnkit

WITH_BN = [z for z in ZOO if z.name != "transformers/DETR"]  # DETR has no nn.BatchNorm


@pytest.mark.parametrize("preset", list(NATIVE))
@pytest.mark.parametrize("zoo", WITH_BN, ids=str)
def test_preset_is_bitwise_the_native_model(zoo: Zoo, preset: str) -> None:
    ours = bnkit.apply(copy.deepcopy(built(zoo)), preset)
    assert_same(trajectory(ours, zoo), native_run(zoo, preset))


OTHER = [p for p in bnkit.presets() if p not in NATIVE]
ONE_PER_LIBRARY = [
    by_name(n)
    for n in (
        "torchvision/mobilenet_v2",
        "timm/efficientnet_b0",
        "monai/ResNet-3d",
        "transformers/LeViT",
        "pyg/GIN",
        "tabnet/TabNet",
    )
]


@pytest.mark.parametrize("preset", OTHER)
@pytest.mark.parametrize("zoo", ONE_PER_LIBRARY, ids=str)
def test_other_presets_train_and_evaluate_with_their_statistics(zoo: Zoo, preset: str) -> None:
    model = bnkit.apply(copy.deepcopy(built(zoo)), preset)
    called: set[str] = set()
    for name, layer in bn_modules(model):
        layer.register_forward_pre_hook(lambda m, a, name=name: called.add(name))
    run = trajectory(model, zoo)
    assert all(torch.isfinite(o).all() for o in run.outputs)
    updates = bnkit.preset(preset).updates(True)
    for name, _ in bn_modules(model):
        key = f"{name}.num_batches_tracked"
        counted = int(run.buffers[1][key] - run.buffers[0][key])  # TabNet: 3 ghost batches
        assert bool(counted) == (updates and name in called), name
    # In eval every preset but `prior` normalizes with the running statistics: an untouched
    # model holding the same numbers computes the same outputs.
    if preset != "prior":
        plain = copy.deepcopy(built(zoo)).eval()
        plain.load_state_dict(model.state_dict(), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(output(plain, zoo, seed=12), run.outputs[-1], rtol=0, atol=0)
