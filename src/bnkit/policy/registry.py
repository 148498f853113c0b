"""Named policies: a string registry, so code, configs and the CLI can say ``"frozen"``.

=================  ===============================  ======================  ==========
name               normalize                        update                  affine
=================  ===============================  ======================  ==========
``pytorch``        batch in train, running in eval  EMA in train            trainable
``frozen``         running                          never                   frozen
``frozen_stats``   running                          never                   trainable
``frozen_affine``  batch in train, running in eval  EMA in train            frozen
``batch_stats``    batch, always                    never                   trainable
``adapt``          running                          EMA (0.01) in train     trainable
``renorm``         batch renormalization in train   EMA (0.01) in train     trainable
``ghost``          ghost batches (16) in train      EMA in train            trainable
``prior``          running mixed with batch (N=16)  never                   trainable
=================  ===============================  ======================  ==========

"EMA" without a number keeps each layer's own ``momentum``; a preset that names one (``adapt``,
``renorm``) sets it while the policy holds.
"""

from __future__ import annotations

from typing import Any

from bnkit.errors import PolicyError
from bnkit.policy.axes import Affine, Normalize, Update
from bnkit.policy.core import REGISTRY, Policy, PresetInfo

__all__ = ["PresetInfo", "preset", "preset_info", "presets", "register_preset", "resolve"]


def register_preset(name: str, policy: Policy, *, same_as: str = "", summary: str = "") -> None:
    """Register a policy under a name (it then works everywhere a preset name does).

    Args:
        name: the preset's name; an existing name is an error.
        policy: the policy it stands for.
        same_as: the peer behaviour it reproduces, for the docs and ``bnkit policies``.
        summary: one line on when to use it.

    Raises:
        PolicyError: the name is taken or not an identifier, or ``policy`` is not a Policy.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise PolicyError(f"a preset name must be an identifier string (got {name!r})")
    if not isinstance(policy, Policy):
        raise PolicyError(
            f"register_preset({name!r}, ...) needs a bnkit.Policy (got "
            f"{type(policy).__name__} {policy!r}); build one with bnkit.Policy(...) or "
            "bnkit.preset(name, **changes)"
        )
    if name in REGISTRY:
        raise PolicyError(f"preset {name!r} is already registered")
    REGISTRY[name] = PresetInfo(name, policy, same_as, summary)


def presets() -> list[str]:
    """The registered preset names, in registration order."""
    return list(REGISTRY)


def preset_info(name: str) -> PresetInfo:
    """The registered preset ``name`` with its documentation.

    Raises:
        PolicyError: no preset has this name (the message lists the known ones).
    """
    if not isinstance(name, str):
        raise PolicyError(f"a preset name is a string (got {type(name).__name__} {name!r})")
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(repr(n) for n in REGISTRY)
        raise PolicyError(f"unknown preset {name!r}; known presets: {known}") from None


def preset(name: str, **changes: Any) -> Policy:
    """The policy registered as ``name``, with some settings changed.

    Args:
        name: a preset name (see :func:`presets`).
        **changes: settings to change, e.g. ``momentum=0.001``.

    Raises:
        PolicyError: unknown name, unknown setting, or an invalid combination.

    Examples:
        >>> import bnkit
        >>> bnkit.preset("adapt", momentum=0.001).momentum
        0.001
    """
    base = preset_info(name).policy
    try:
        return base.replace(**changes)
    except PolicyError as err:
        raise PolicyError(f"preset {name!r}: {err}") from None


def resolve(policy: Policy | str) -> Policy:
    """A policy from a policy or a preset name."""
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str):
        return preset(policy)
    raise PolicyError(
        f"expected a bnkit.Policy or a preset name (got {type(policy).__name__} {policy!r})"
    )


register_preset(
    "pytorch",
    Policy(),
    same_as="plain nn.BatchNorm (the layer's own momentum)",
    summary="batch statistics and EMA updates in train(), running statistics in eval()",
)
register_preset(
    "frozen",
    Policy(normalize=Normalize.RUNNING, update=Update.NEVER, affine=Affine.FROZEN),
    same_as="torchvision/detectron2 FrozenBatchNorm2d; Keras trainable=False",
    summary="a fixed affine map: nothing about the layer changes in training",
)
register_preset(
    "frozen_stats",
    Policy(normalize=Normalize.RUNNING, update=Update.NEVER),
    same_as="fastai BnFreeze; OpenMMLab norm_eval=True",
    summary="pretrained statistics kept; gamma/beta still learn",
)
register_preset(
    "frozen_affine",
    Policy(affine=Affine.FROZEN),
    same_as="requires_grad_(False) alone: statistics still drift in train()",
    summary="gamma/beta fixed; statistics behave as plain BatchNorm",
)
register_preset(
    "batch_stats",
    Policy(normalize=Normalize.BATCH, update=Update.NEVER),
    same_as="track_running_stats=False; TENT's normalization",
    summary="every output normalized by its own batch, in train and eval",
)
register_preset(
    "adapt",
    Policy(normalize=Normalize.RUNNING, update=Update.EMA, momentum=0.01),
    same_as="no PyTorch equivalent: normalize with running statistics, keep updating them",
    summary="stable outputs while the statistics follow the data slowly",
)
register_preset(
    "renorm",
    Policy(normalize=Normalize.RENORM, momentum=0.01),
    same_as="Keras BatchNormalization(renorm=True); Ioffe 2017 with r_max 3, d_max 5",
    summary="batch statistics pulled toward the running ones: small or non-i.i.d. batches",
)
register_preset(
    "ghost",
    Policy(normalize=Normalize.GHOST),
    same_as="TabNet's ghost BatchNorm; tf.keras BatchNormalization(virtual_batch_size=16)",
    summary="groups of at most 16 samples, each normalized by its own statistics: a regularizer",
)
register_preset(
    "prior",
    Policy(normalize=Normalize.PRIOR, update=Update.NEVER),
    same_as="Schneider et al. 2020 prior BN (N=16); robusta's BayesianBatchNorm",
    summary="test-time adaptation robust to small batches: source statistics as a prior",
)
