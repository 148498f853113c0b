"""Reading study settings from TOML (or nested dicts), with errors that list what is allowed.

A TOML file sets any subset of the fields of :class:`~bnkit.study.config.settings.StudyConfig`;
the tables ``[pretrain]``, ``[test_time]``, ``[finetune]``, ``[bn_only]``, ``[data]`` and
``[verdicts]`` hold the fields of the matching sections::

    seeds = 3
    shifts = ["contrast", "gaussian_noise", "mnist_to_digits"]
    severities = [5]

    [test_time]
    adabn_n = [16, "all"]
    batch_sizes = [1, 64]

    [finetune]
    lrs = [1e-3, 1e-2]

Reading TOML uses ``tomllib`` (Python 3.11+) or, on Python 3.10, the ``tomli`` package.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import types
import typing
from pathlib import Path
from typing import Any

from bnkit.errors import StudyError

__all__ = ["convert", "read_toml"]


def _toml_loader() -> Any:
    name = "tomllib" if sys.version_info >= (3, 11) else "tomli"
    try:
        return importlib.import_module(name).loads
    except ImportError:
        raise StudyError(
            "reading a TOML study config on Python 3.10 needs the tomli package; "
            "install it with pip install tomli (Python 3.11+ reads TOML without it)"
        ) from None


def read_toml(path: str | Path) -> dict[str, Any]:
    """The settings in the TOML file at ``path``.

    Raises:
        StudyError: the file cannot be read, is not UTF-8 text, or is not valid TOML.
    """
    loads = _toml_loader()
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise StudyError(f"cannot read the study config {str(path)!r}: {err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise StudyError(
            f"study config {str(path)!r} is not UTF-8 text (byte {err.start}); save it as UTF-8"
        ) from None
    try:
        data: dict[str, Any] = loads(text)
    except ValueError as err:
        raise StudyError(f"study config {str(path)!r} is not valid TOML: {err}") from None
    return data


def convert(cls: type, current: Any, data: dict[str, Any], where: str) -> dict[str, Any]:
    """The changes ``data`` makes to the dataclass ``current`` of type ``cls``, type-checked."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise StudyError(f"{where}: unknown setting {key!r}; known settings: {known}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise StudyError(f"{where}: [{key}] must be a table (got {value!r})")
            sub = convert(hint, getattr(current, key), value, f"{where} [{key}]")  # type: ignore[arg-type]
            changes[key] = dataclasses.replace(getattr(current, key), **sub)
        else:
            changes[key] = _coerce(hint, value, f"{where}: {key}")
    return changes


def _coerce(hint: Any, value: Any, what: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list):
            raise StudyError(f"{what} must be a list (got {value!r})")
        return tuple(_coerce(item, v, what) for v in value)
    if origin in (typing.Union, types.UnionType):  # int | None: "all" means None
        if value == "all":
            return None
        return _coerce(int, value, what)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise StudyError(f"{what} must be {hint.__name__} (got {value!r})")
    return value
