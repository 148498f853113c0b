"""``bnkit inspect``: build a model from a factory, load a checkpoint, report and check it.

Exit codes: 0 no error-severity finding, 1 at least one, 2 bnkit could not run the check (bad
factory path, import failure, a factory that exits or raises, missing, unreadable or unfitting
checkpoint, a model without values, bad or oversized shape, anything else that fails), always
with one line on stderr and no traceback: CI must never read a crash as a finding.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from bnkit.diagnostics.check import check, errors
from bnkit.diagnostics.report import report
from bnkit.diagnostics.rules import kinds
from bnkit.errors import DiagnosticError

_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
MAX_VALUES = 2**28
"""The largest example input ``--input-shape`` may ask for (1 GiB of float32)."""


__all__ = ["register", "run"]


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "inspect",
        help="report and check the BatchNorm layers of a model (exit 1 on errors)",
        description=(
            "Build a model with FACTORY (package.module:function, called without arguments; "
            "the current directory is importable), optionally load a checkpoint, and print "
            "the BatchNorm report and the findings of bnkit.check. Exit code 0: no error "
            "finding; 1: an error finding; 2: bnkit could not run the check (one line on "
            "stderr)."
        ),
    )
    p.add_argument("factory", help="package.module:function that returns the model")
    p.add_argument("--checkpoint", help="a state_dict file (loaded with weights_only=True)")
    p.add_argument(
        "--input-shape",
        help="shape of a random normal example input, e.g. 8,3,32,32 (enables input checks)",
    )
    p.add_argument("--eval", action="store_true", help="put the model in eval() first")
    p.add_argument("--seed", type=int, default=0, help="seed of the example input")
    p.add_argument(
        "--ignore", action="append", default=[], metavar="KIND", help="leave out a finding kind"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=run)


def load_factory(spec: str) -> Any:
    """The callable named by ``package.module:attribute`` (attribute may be dotted)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise DiagnosticError(f"FACTORY must look like package.module:function (got {spec!r})")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
    except SystemExit as err:
        raise DiagnosticError(
            f"importing {module_name!r} called sys.exit({err.code!r}); guard the module's "
            "script code with `if __name__ == '__main__':`"
        ) from None
    except Exception as err:
        raise DiagnosticError(
            f"cannot import {module_name!r}: {type(err).__name__}: {_line(err)}"
        ) from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise DiagnosticError(f"module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise DiagnosticError(f"{spec!r} is a {type(target).__name__}, not a callable")
    return target


def build(spec: str) -> nn.Module:
    """Call the factory; it must return an ``nn.Module``."""
    factory = load_factory(spec)
    try:
        model = factory()
    except SystemExit as err:
        raise DiagnosticError(
            f"factory {spec!r} called sys.exit({err.code!r}) instead of returning a model"
        ) from None
    except Exception as err:
        raise DiagnosticError(
            f"factory {spec!r} raised {type(err).__name__}: {_line(err)}"
        ) from None
    if not isinstance(model, nn.Module):
        raise DiagnosticError(
            f"factory {spec!r} returned {type(model).__name__}, expected a torch.nn.Module"
        )
    return model


def _line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _is_state(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _state_dict(loaded: Any, path: str) -> Mapping[str, Any]:
    if isinstance(loaded, Mapping):
        if _is_state(loaded):
            return loaded
        for key in _STATE_KEYS:
            inner = loaded.get(key)
            if isinstance(inner, Mapping) and _is_state(inner):
                return inner
    raise DiagnosticError(
        f"checkpoint {path!r} holds no state_dict (a mapping of names (strings) to tensors, at "
        f"the top level or under one of {', '.join(repr(k) for k in _STATE_KEYS)})"
    )


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load a state_dict with ``weights_only=True`` and ``strict=True``.

    A checkpoint saved from a DDP/DataParallel model (keys prefixed ``module.``) is accepted;
    a model built on the meta device takes the checkpoint's tensors (``assign=True``).
    """
    if not os.path.isfile(path):
        raise DiagnosticError(f"checkpoint {path!r} not found")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DiagnosticError(
            f"cannot load checkpoint {path!r} with weights_only=True: {_line(err)[:300]}"
        ) from None
    state = dict(_state_dict(loaded, path))
    own = model.state_dict()
    if (
        state
        and all(k.startswith("module.") for k in state)
        and not any(k.startswith("module.") for k in own)
    ):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=_on_meta(model) != [])
    except RuntimeError as err:
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        detail = (
            f"missing keys {missing[:4]}, unexpected keys {unexpected[:4]}"
            if missing or unexpected
            else _line(err)[:300]
        )
        raise DiagnosticError(f"checkpoint {path!r} does not fit the model: {detail}") from None


def parse_shape(text: str) -> tuple[int, ...]:
    """``"8,3,32,32"`` as a tuple of positive integers."""
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise DiagnosticError(
            f"--input-shape must be positive integers like 8,3,32,32 (got {text!r})"
        ) from None
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise DiagnosticError(
            f"--input-shape needs at least 2 positive dims N,C[,...] (got {text!r})"
        )
    values = math.prod(shape)
    if values > MAX_VALUES:
        raise DiagnosticError(
            f"--input-shape {text} asks for {values:.3g} values, more than the {MAX_VALUES:.3g} "
            "bnkit inspect allows; the checks need one small batch (8 to 64 samples)"
        )
    return shape


def _on_meta(model: nn.Module) -> list[str]:
    return [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]


def _no_meta(model: nn.Module) -> None:
    meta = _on_meta(model)
    if meta:
        raise DiagnosticError(
            f"the model's tensors ({meta[0]!r} and {len(meta) - 1} more) are on the meta "
            "device: shapes without values, nothing to check; pass --checkpoint to load values "
            "into them, or build the model on a real device"
        )


def run(args: argparse.Namespace) -> int:
    """Run the command; a failure that is not a bnkit error becomes one line too (exit 2)."""
    try:
        return _run(args)
    except (DiagnosticError, KeyboardInterrupt):
        raise
    except Exception as err:
        raise DiagnosticError(
            f"could not run the check: {type(err).__name__}: {_line(err)[:300]}"
        ) from None


def _run(args: argparse.Namespace) -> int:
    unknown = [k for k in args.ignore if k not in kinds()]
    if unknown:
        raise DiagnosticError(f"--ignore {unknown[0]!r}: unknown kind; kinds: {', '.join(kinds())}")
    shape = parse_shape(args.input_shape) if args.input_shape else None
    model = build(args.factory)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    _no_meta(model)
    if args.eval:
        model.eval()
    example = None
    if shape is not None:
        params = [p for p in model.parameters() if p.is_floating_point()]
        dtype = params[0].dtype if params else torch.get_default_dtype()
        gen = torch.Generator().manual_seed(args.seed)
        try:
            example = torch.randn(shape, generator=gen, dtype=dtype)
        except RuntimeError as err:
            raise DiagnosticError(
                f"cannot make an example input of shape {args.input_shape}: {_line(err)[:200]}"
            ) from None
    rep = report(model)
    findings = check(model, example, ignore=args.ignore)
    if args.json:
        doc = {"report": rep.to_dict(), "findings": [f.to_dict() for f in findings]}
        print(json.dumps(doc, indent=2, allow_nan=False))
    else:
        rep.print()
        print()
        if findings:
            print(f"{len(findings)} finding(s):\n")
            print("\n\n".join(str(f) for f in findings))
        else:
            print("no findings")
    return 1 if errors(findings) else 0
