"""The user's model: a factory (``package.module:function``), optionally a checkpoint.

The factory is called without arguments and must return an ``nn.Module`` with at least one
BatchNorm layer and logits of shape (N, outputs). A checkpoint (a state dict, or a dict holding
one under ``"state_dict"``) is loaded with ``weights_only=True`` and is then the source model
for every seed; its file's digest joins every cell's key.

Labels and outputs (:func:`output_labels`): a label is the index of the model's output for its
class. Labels that are not indices of the outputs (a factory with labels {3, 7} for a model
with 2 outputs) are mapped to 0, 1, … in sorted order when the study trains the model itself,
and the report says so; with a checkpoint that would silently pair classes with outputs the
model was never trained for, so it is refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn as nn

import bnkit
from bnkit.errors import StudyError
from bnkit.study.data.user import load_factory

__all__ = ["build", "check_outputs", "checkpoint_digest", "load_checkpoint", "output_labels"]


def build(spec: str) -> nn.Module:
    """A fresh model from the factory ``spec``; it must hold at least one BatchNorm layer."""
    try:
        model = load_factory(spec, "--model")()
    except StudyError:
        raise
    except Exception as err:
        raise StudyError(f"--model {spec!r} failed: {type(err).__name__}: {err}") from None
    if not isinstance(model, nn.Module):
        raise StudyError(
            f"--model {spec!r} returned {type(model).__name__}; it must return a torch.nn.Module"
        )
    if not any(True for _ in bnkit.bn_layers(model)):
        raise StudyError(
            f"--model {spec!r} has no BatchNorm layer; bnkit study compares BatchNorm "
            "strategies, so the model needs at least one"
        )
    return model


def checkpoint_digest(path: str) -> str:
    """SHA-256 (first 16 hex digits) of the checkpoint file's bytes."""
    h = hashlib.sha256()
    try:
        with Path(path).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as err:
        raise StudyError(f"cannot read checkpoint {path!r}: {err}") from None
    return h.hexdigest()[:16]


def load_checkpoint(model: nn.Module, path: str, spec: str) -> None:
    """Load the state dict at ``path`` into ``model`` (``weights_only=True``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise StudyError(f"cannot load checkpoint {path!r}: {err}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise StudyError(f"checkpoint {path!r} does not fit --model {spec!r}: {err}") from None


def check_outputs(model: nn.Module, x: torch.Tensor, spec: str) -> int:
    """The number of logits ``model`` returns per sample on ``x`` (a small batch)."""
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as err:
        raise StudyError(
            f"--model {spec!r} failed on a batch of shape {tuple(x.shape)}: {err}; "
            "check the image size (--image-size) and channels"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise StudyError(f"--model {spec!r} must return logits of shape (N, classes) (got {got})")
    return int(out.shape[1])


def output_labels(labels: list[int], outputs: int, checkpoint: bool, spec: str) -> dict[int, int]:
    """How the data's labels map to the model's outputs (identity when they are indices).

    Raises:
        StudyError: too few outputs for the classes, or labels that are not output indices
            with a checkpoint (the pairing of classes and outputs would be a guess).
    """
    present = sorted(set(labels))
    if all(0 <= y < outputs for y in present):
        return {y: y for y in present}
    if len(present) > outputs:
        raise StudyError(
            f"--model {spec!r} has {outputs} outputs, but the data has {len(present)} classes "
            f"(labels {present}); the model needs one output per class"
        )
    if checkpoint:
        raise StudyError(
            f"the labels {present} are not indices of the {outputs} outputs of --model "
            f"{spec!r}; with a checkpoint each label must be the output index the model was "
            f"trained with: relabel the data to 0…{outputs - 1}, or leave out --checkpoint to "
            "have the study train the model (it then maps the labels in sorted order)"
        )
    return {y: i for i, y in enumerate(present)}
