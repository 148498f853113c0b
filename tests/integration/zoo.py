"""Real models from six libraries, built offline from their own constructors (random init).

Each :class:`Zoo` entry builds a small configuration of a model people fine-tune, an example
input (small spatial sizes, so the whole integration suite runs in about a minute on two
cores), and the tensor its output is judged by. Nothing is downloaded: every constructor runs
with random weights. A built model comes with *warmed* BatchNorm layers: gamma/beta are drawn
at random, then one forward of a batch of 32 with the BatchNorm layers in train() and momentum
1 (dropout off) gives every layer the statistics of what it sees, so that eval outputs, folds
and frozen exports depend on every number a layer holds and stay in range.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["ZOO", "Zoo", "bn_modules", "build", "built", "by_name", "call", "output"]

Args = tuple[tuple[Any, ...], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Zoo:
    """One real model: how to build it, feed it and read its output."""

    name: str
    """``library/model``."""
    library: str
    make: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator, int], Args]
    """``(generator, batch size) -> (args, kwargs)``."""
    batch: int = 2
    pick: Callable[[Any], Tensor] = lambda out: out
    """The tensor of the model's output that tests compare and train on."""

    def __str__(self) -> str:
        return self.name


def _image(channels: int, *size: int) -> Callable[[torch.Generator, int], Args]:
    def make(gen: torch.Generator, n: int) -> Args:
        return (torch.randn(n, channels, *size, generator=gen),), {}

    return make


def _pixels(size: int) -> Callable[[torch.Generator, int], Args]:
    def make(gen: torch.Generator, n: int) -> Args:
        return (), {"pixel_values": torch.randn(n, 3, size, size, generator=gen)}

    return make


def _logits(out: Any) -> Tensor:
    logits = out.logits
    assert isinstance(logits, Tensor)
    return logits


# --------------------------------------------------------------------------- torchvision
def _tv_resnet18() -> nn.Module:
    from torchvision.models import resnet18

    return resnet18(num_classes=10)


def _tv_mobilenet_v2() -> nn.Module:
    from torchvision.models import mobilenet_v2

    return mobilenet_v2(num_classes=10, width_mult=0.5)


# --------------------------------------------------------------------------- timm
def _timm(name: str) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import timm

        model: nn.Module = timm.create_model(name, pretrained=False, num_classes=10)
        return model

    return make


# --------------------------------------------------------------------------- MONAI
def _monai_densenet121() -> nn.Module:
    from monai.networks.nets import DenseNet121

    # DenseNet-121's 121 BatchNorm layers (blocks of 6, 12, 24, 16), at a small width.
    return DenseNet121(
        spatial_dims=2, in_channels=3, out_channels=4, init_features=16, growth_rate=8, bn_size=2
    )


def _monai_resnet(dims: int) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        from monai.networks.nets import ResNet

        return ResNet(
            block="basic",
            layers=(1, 1, 1, 1),
            block_inplanes=(8, 16, 32, 64),
            spatial_dims=dims,
            n_input_channels=1,
            num_classes=3,
        )

    return make


def _monai_unet() -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        channels=(8, 16, 32),
        strides=(2, 2),
        num_res_units=1,
        norm="batch",
    )


def _monai_efficientnet() -> nn.Module:
    from monai.networks.nets import EfficientNetBN

    return EfficientNetBN(
        "efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=3, num_classes=4
    )


# --------------------------------------------------------------------------- transformers
def _hf_resnet() -> nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=3
    )
    return ResNetForImageClassification(config)


def _hf_mobilenet_v2() -> nn.Module:
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    config = MobileNetV2Config(depth_multiplier=0.35, image_size=16, num_labels=3)
    return MobileNetV2ForImageClassification(config)


def _hf_regnet() -> nn.Module:
    from transformers import RegNetConfig, RegNetForImageClassification

    config = RegNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 2], groups_width=8, num_labels=3
    )
    return RegNetForImageClassification(config)


def _hf_levit() -> nn.Module:
    from transformers import LevitConfig, LevitForImageClassification

    config = LevitConfig(
        image_size=32,
        hidden_sizes=[16, 32, 48],
        num_attention_heads=[1, 2, 3],
        depths=[1, 1, 1],
        key_dim=[8, 8, 8],
        mlp_ratio=[2, 2, 2],
        attention_ratio=[2, 2, 2],
        num_labels=3,
    )
    return LevitForImageClassification(config)


def _hf_detr() -> nn.Module:
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    backbone = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        out_features=["stage2"],
    )
    config = DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=backbone,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=5,
        num_labels=3,
    )
    return DetrForObjectDetection(config)


# --------------------------------------------------------------------------- PyG
class GIN(nn.Module):
    """A two-layer GIN whose MLPs use PyG's ``BatchNorm`` (a wrapper of ``nn.BatchNorm1d``)."""

    def __init__(self, features: int = 6, hidden: int = 16, classes: int = 3) -> None:
        super().__init__()
        with warnings.catch_warnings():  # PyG's import scripts a function with torch.jit
            warnings.simplefilter("ignore", DeprecationWarning)
            from torch_geometric.nn import BatchNorm, GINConv, global_add_pool

        def mlp(a: int, b: int) -> nn.Module:
            return nn.Sequential(nn.Linear(a, b), BatchNorm(b), nn.ReLU(), nn.Linear(b, b))

        self.conv1 = GINConv(mlp(features, hidden))
        self.conv2 = GINConv(mlp(hidden, hidden))
        self.norm = BatchNorm(hidden)
        self.head = nn.Linear(hidden, classes)
        self.pool = global_add_pool

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor) -> Tensor:
        x = self.conv1(x, edge_index).relu()
        x = self.norm(self.conv2(x, edge_index)).relu()
        out: Tensor = self.head(self.pool(x, batch))
        return out


def _graphs(gen: torch.Generator, n: int) -> Args:
    """``n`` random graphs of 5 nodes each (an edge list and the graph index of every node)."""
    nodes = 5 * n
    src = torch.randint(0, 5, (n, 8), generator=gen) + 5 * torch.arange(n)[:, None]
    dst = torch.randint(0, 5, (n, 8), generator=gen) + 5 * torch.arange(n)[:, None]
    edges = torch.stack([src.flatten(), dst.flatten()])
    batch = torch.arange(n).repeat_interleave(5)
    return (torch.randn(nodes, 6, generator=gen), edges, batch), {}


# --------------------------------------------------------------------------- TabNet
def _tabnet() -> nn.Module:
    from pytorch_tabnet.tab_network import TabNet
    from pytorch_tabnet.utils import create_group_matrix

    return TabNet(
        input_dim=7,
        output_dim=2,
        n_d=4,
        n_a=4,
        n_steps=2,
        virtual_batch_size=8,
        momentum=0.02,
        group_attention_matrix=create_group_matrix([], 7),
    )


def _table(gen: torch.Generator, n: int) -> Args:
    return (torch.randn(n, 7, generator=gen),), {}


def _first(out: Any) -> Tensor:
    assert isinstance(out, tuple) and isinstance(out[0], Tensor)
    return out[0]


ZOO: tuple[Zoo, ...] = (
    Zoo("torchvision/resnet18", "torchvision", _tv_resnet18, _image(3, 16, 16)),
    Zoo("torchvision/mobilenet_v2", "torchvision", _tv_mobilenet_v2, _image(3, 16, 16)),
    Zoo("timm/resnet18", "timm", _timm("resnet18"), _image(3, 16, 16)),
    Zoo("timm/efficientnet_b0", "timm", _timm("efficientnet_b0"), _image(3, 16, 16)),
    Zoo("timm/regnety_002", "timm", _timm("regnety_002"), _image(3, 16, 16)),
    Zoo("timm/mobilenetv3_small_100", "timm", _timm("mobilenetv3_small_100"), _image(3, 16, 16)),
    Zoo("monai/DenseNet121", "monai", _monai_densenet121, _image(3, 32, 32)),
    Zoo("monai/ResNet-2d", "monai", _monai_resnet(2), _image(1, 16, 16)),
    Zoo("monai/ResNet-3d", "monai", _monai_resnet(3), _image(1, 8, 8, 8)),
    Zoo("monai/UNet", "monai", _monai_unet, _image(1, 16, 16)),
    Zoo("monai/EfficientNetBN", "monai", _monai_efficientnet, _image(3, 32, 32)),
    Zoo("transformers/ResNet", "transformers", _hf_resnet, _pixels(16), pick=_logits),
    Zoo("transformers/MobileNetV2", "transformers", _hf_mobilenet_v2, _pixels(16), pick=_logits),
    Zoo("transformers/RegNet", "transformers", _hf_regnet, _pixels(16), pick=_logits),
    Zoo("transformers/LeViT", "transformers", _hf_levit, _pixels(32), pick=_logits),
    Zoo("transformers/DETR", "transformers", _hf_detr, _pixels(16), pick=_logits),
    Zoo("pyg/GIN", "pyg", GIN, _graphs),
    Zoo("tabnet/TabNet", "tabnet", _tabnet, _table, batch=20, pick=_first),
)


def by_name(name: str) -> Zoo:
    """The entry called ``name``."""
    return next(z for z in ZOO if z.name == name)


def bn_modules(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """Every ``_BatchNorm`` of a model with its name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm)]


def call(model: nn.Module, zoo: Zoo, args: Args) -> Tensor:
    """Run the model on ``args`` and pick the tensor its output is judged by."""
    positional, keywords = args
    return zoo.pick(model(*positional, **keywords))


def output(model: nn.Module, zoo: Zoo, seed: int = 1, batch: int | None = None) -> Tensor:
    """The picked output on the example input of the given seed."""
    gen = torch.Generator().manual_seed(seed)
    return call(model, zoo, zoo.inputs(gen, batch or zoo.batch))


def _frozen_bn_buffers(model: nn.Module) -> list[nn.Module]:
    """Frozen BatchNorm layers of the libraries (gamma/beta and statistics as buffers)."""
    return [
        m
        for m in model.modules()
        if not isinstance(m, _BatchNorm)
        and type(m).__name__.endswith("FrozenBatchNorm2d")
        and isinstance(getattr(m, "running_var", None), Tensor)
    ]


@torch.no_grad()
def _warm(model: nn.Module, zoo: Zoo, gen: torch.Generator) -> None:
    layers = bn_modules(model)
    for _, m in layers:  # gamma/beta first, so that the statistics fit the layers after them
        if m.weight is not None and m.bias is not None:
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
    for m in _frozen_bn_buffers(model):
        c = m.running_var.numel()
        m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
        m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
        m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
    momenta = [m.momentum for _, m in layers]
    model.eval()  # dropout and drop-connect off: the statistics eval() will see
    for _, m in layers:
        m.momentum = 1.0
        m.train()
    call(model, zoo, zoo.inputs(gen, 32))  # enough samples for every channel
    for (_, m), momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum


def build(zoo: Zoo) -> nn.Module:
    """The model of ``zoo``, built with a fixed seed and warmed BatchNorm layers, in train()."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = zoo.make()
        _warm(model, zoo, torch.Generator().manual_seed(0))
    return model.train()


_BUILT: dict[str, nn.Module] = {}


def built(zoo: Zoo) -> nn.Module:
    """The model of ``zoo``, built once per session (copy it before changing it)."""
    if zoo.name not in _BUILT:
        _BUILT[zoo.name] = build(zoo)
    return _BUILT[zoo.name]
