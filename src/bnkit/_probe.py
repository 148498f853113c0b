"""A one-time check that a subclass's own ``forward`` reaches bnkit's.

A subclass that overrides ``forward`` keeps its behaviour only if it calls
``super().forward(x)``; one that calls ``F.batch_norm`` itself would silently ignore the policy.
The check hooks the layer's next forward, runs once per class, and removes itself.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnkit.errors import LayerError

__all__ = ["foreign_forward", "install_probe", "remove_probe"]

_VERIFIED: set[type[nn.Module]] = set()


def foreign_forward(cls: type[nn.Module]) -> bool:
    """Whether ``cls`` defines its own forward (which must call ``super().forward``)."""
    for klass in cls.__mro__:
        if "forward" in vars(klass):
            return klass not in (_BatchNorm, nn.SyncBatchNorm)
    return False


def install_probe(layer: nn.Module, cls: type[nn.Module]) -> None:
    """Check, on ``layer``'s next forward, that ``cls.forward`` reaches bnkit's forward."""
    if cls in _VERIFIED or not foreign_forward(cls):
        return
    remove_probe(layer)
    vars(layer)["_bnkitprobe_on"] = True
    vars(layer)["_bnkitprobe_cls"] = cls
    layer.register_forward_pre_hook(_probe_before)
    layer.register_forward_hook(_probe_after)


def remove_probe(layer: nn.Module) -> None:
    """Remove the check :func:`install_probe` added, if any."""
    pairs = ((layer._forward_pre_hooks, _probe_before), (layer._forward_hooks, _probe_after))
    for hooks, fn in pairs:
        for key in [k for k, f in hooks.items() if f is fn]:
            del hooks[key]
    for attr in ("_bnkitprobe_on", "_bnkitprobe_hit", "_bnkitprobe_saved", "_bnkitprobe_cls"):
        vars(layer).pop(attr, None)


def _probe_before(module: nn.Module, args: Any) -> None:
    vars(module)["_bnkitprobe_hit"] = False
    vars(module)["_bnkitprobe_saved"] = [b.clone() for b in module.buffers(recurse=False)]


def _probe_after(module: nn.Module, args: Any, output: Any) -> None:
    state = vars(module)
    hit = state.get("_bnkitprobe_hit", False)
    saved = state.get("_bnkitprobe_saved", [])
    cls = state.get("_bnkitprobe_cls", type(module))
    remove_probe(module)
    if hit:
        _VERIFIED.add(cls)
        return
    for buf, old in zip(module.buffers(recurse=False), saved, strict=True):
        buf.copy_(old)
    name = state.get("_bnkit_name", "") or cls.__name__
    raise LayerError(
        f"layer {name!r}: {cls.__name__}.forward does not call BatchNorm's forward "
        "(super().forward(x)), so bnkit cannot apply its policy "
        f"{state.get('_bnkit_policy')!r}; make its forward call super().forward(x) and "
        "post-process the result, or call bnkit.unfreeze on it"
    )
