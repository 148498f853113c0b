"""The study's grid: one frozen dataclass, with the default, the quick grid and TOML files.

A TOML file sets any subset of the fields; the tables ``[pretrain]``, ``[test_time]``,
``[finetune]`` and ``[bn_only]`` hold the fields of the matching sections::

    seeds = 3
    shifts = ["contrast", "gaussian_noise", "rotation"]
    severities = [5]

    [test_time]
    adabn_n = [16, "all"]
    batch_sizes = [1, 64]

    [finetune]
    shots = [5]
    lrs = [1e-3]

Unknown keys, wrong types and unknown names are errors that list what is allowed. Reading TOML
uses ``tomllib`` (Python 3.11+) or, on Python 3.10, the ``tomli`` package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from bnkit.errors import StudyError
from bnkit.study.shifts import SHIFTS
from bnkit.study.strategies import FINETUNE, TEST_TIME

__all__ = [
    "AdaptConfig",
    "BnOnlyConfig",
    "FineTuneConfig",
    "PretrainConfig",
    "StudyConfig",
]


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Source training of the BN model and its GroupNorm twin (SGD, cosine schedule)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    """Protocol 1, unsupervised adaptation at test time.

    The sweeps (``adabn_n``, ``batch_sizes``, ``streams``) run at the highest severity (and on
    the unshifted target); lower severities run ``source``, ``adabn`` on the whole pool,
    ``test_batch`` at the largest batch size and ``tent`` on the i.i.d. stream.
    """

    strategies: tuple[str, ...] = tuple(TEST_TIME)
    adabn_n: tuple[int | None, ...] = (16, 64, None)
    batch_sizes: tuple[int, ...] = (1, 4, 16, 64)
    streams: tuple[str, ...] = ("iid", "sorted")
    prior_strength: float = 16.0
    adapt_momentum: float = 0.01
    tent_lr: float = 1e-3
    tent_batch_size: int = 64
    stress_lr: float = 5e-2
    stress_passes: int = 5


@dataclasses.dataclass(frozen=True)
class FineTuneConfig:
    """Protocol 2, supervised few-shot fine-tuning (SGD with momentum 0.9, constant lr)."""

    strategies: tuple[str, ...] = tuple(FINETUNE)
    shifts: tuple[str, ...] = ("contrast", "gaussian_noise", "rotation")
    severity: int = 5
    shots: tuple[int, ...] = (5, 20)
    batch_sizes: tuple[int, ...] = (2, 8, 32)
    steps: int = 30
    lrs: tuple[float, ...] = (1e-4, 1e-3)
    ghost_size: int = 4


@dataclasses.dataclass(frozen=True)
class BnOnlyConfig:
    """The BN-only check: a randomly initialized BN network trained only in gamma/beta."""

    epochs: int = 10
    lr: float = 1.0


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Everything that decides what the study runs and computes.

    Args:
        seeds: number of seeds (0, 1, …); each seed has its own data split, source models,
            shifted images and few-shot samples.
        image_size: side of the (square) images.
        width: channels of the network's first stage.
        shifts: target domains (see :mod:`bnkit.study.shifts`); ``"none"`` is always added as
            the unshifted reference.
        severities: severities 1–5 to run.
        groupnorm: also train and score the GroupNorm twin (the control without batch stats).
    """

    seeds: int = 5
    image_size: int = 16
    width: int = 16
    shifts: tuple[str, ...] = tuple(SHIFTS)
    severities: tuple[int, ...] = (1, 3, 5)
    groupnorm: bool = True
    pretrain: PretrainConfig = PretrainConfig()
    test_time: AdaptConfig = AdaptConfig()
    finetune: FineTuneConfig = FineTuneConfig()
    bn_only: BnOnlyConfig = BnOnlyConfig()

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def default(cls) -> StudyConfig:
        """The default benchmark (about 3,500 cells; minutes on 2 CPU cores)."""
        return cls()

    @classmethod
    def quick(cls) -> StudyConfig:
        """A smaller grid (3 seeds, severity 5, fewer sweeps) for a first look."""
        return cls(
            seeds=3,
            shifts=("contrast", "inversion", "gaussian_noise", "pixelate", "rotation"),
            severities=(5,),
            pretrain=PretrainConfig(epochs=8),
            test_time=AdaptConfig(adabn_n=(16, None), batch_sizes=(1, 16, 64), stress_passes=3),
            finetune=FineTuneConfig(
                shifts=("contrast", "gaussian_noise"), shots=(5,), batch_sizes=(2, 32)
            ),
            bn_only=BnOnlyConfig(epochs=6),
        )

    @classmethod
    def from_toml(cls, path: str | Path, base: StudyConfig | None = None) -> StudyConfig:
        """``base`` (default: :meth:`default`) with the settings of the TOML file at ``path``.

        Raises:
            StudyError: unreadable file, bad TOML, unknown key, wrong type or value.
        """
        loads = _toml_loader()
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise StudyError(f"cannot read the study config {str(path)!r}: {err}") from None
        try:
            data = loads(text)
        except ValueError as err:
            raise StudyError(f"study config {str(path)!r} is not valid TOML: {err}") from None
        return (base or cls()).replace_from(data, where=str(path))

    def replace_from(self, data: dict[str, Any], where: str = "settings") -> StudyConfig:
        """A copy with the (nested) settings in ``data`` applied, checked like a TOML file."""
        changes = _convert(type(self), self, data, where)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON- and TOML-friendly; ``None`` in ``adabn_n`` becomes "all")."""
        out: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(self)))
        out["test_time"]["adabn_n"] = [
            "all" if n is None else n for n in out["test_time"]["adabn_n"]
        ]
        return out

    def settings_hash(self, *sections: str) -> str:
        """A short hash of the settings that decide what one cell computes.

        Grid axes (which seeds, shifts, strategies, sizes are run) are left out, so a larger
        grid reuses the cells of a smaller one made with the same settings.
        """
        d = self.to_dict()
        keep: dict[str, Any] = {"image_size": d["image_size"], "width": d["width"]}
        keep["pretrain"] = d["pretrain"]
        axes = {"strategies", "adabn_n", "batch_sizes", "streams", "shifts", "shots", "lrs"}
        for name in sections:
            keep[name] = {k: v for k, v in d[name].items() if k not in axes}
        blob = json.dumps(keep, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


def _toml_loader() -> Any:
    name = "tomllib" if sys.version_info >= (3, 11) else "tomli"
    try:
        return importlib.import_module(name).loads
    except ImportError:
        raise StudyError(
            "reading a TOML study config on Python 3.10 needs the tomli package; "
            "install it with pip install tomli (Python 3.11+ reads TOML without it)"
        ) from None


def _convert(cls: type, current: Any, data: dict[str, Any], where: str) -> dict[str, Any]:
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
            sub = _convert(hint, getattr(current, key), value, f"{where} [{key}]")  # type: ignore[arg-type]
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


def _validate(c: StudyConfig) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise StudyError(message)

    def names(given: tuple[str, ...], known: typing.Iterable[str], what: str) -> None:
        bad = [n for n in given if n not in known]
        need(not bad, f"unknown {what} {bad}; known: {', '.join(known)}")

    names(c.shifts, SHIFTS, "shifts")
    names(c.finetune.shifts, (*SHIFTS, "none"), "fine-tuning shifts")
    names(c.test_time.strategies, TEST_TIME, "test-time strategies")
    names(c.finetune.strategies, FINETUNE, "fine-tuning strategies")
    names(c.test_time.streams, ("iid", "sorted"), "streams")
    need(c.seeds >= 1, f"seeds must be at least 1 (got {c.seeds})")
    need(c.image_size >= 8 and c.width >= 4, "image_size must be >= 8 and width >= 4")
    need(all(1 <= s <= 5 for s in c.severities) and bool(c.severities), "severities are 1 to 5")
    need(1 <= c.finetune.severity <= 5, "finetune severity must be 1 to 5")
    sizes = (*c.test_time.batch_sizes, *c.finetune.batch_sizes, c.test_time.tent_batch_size)
    need(all(b >= 1 for b in sizes), f"batch sizes must be >= 1 (got {sizes})")
    need(all(b >= 2 for b in c.finetune.batch_sizes), "fine-tuning batch sizes must be >= 2")
    need(all(n is None or n >= 2 for n in c.test_time.adabn_n), "adabn_n values must be >= 2")
    need(all(k >= 1 for k in c.finetune.shots), "shots (labels per class) must be >= 1")
    need(c.finetune.steps >= 1 and c.test_time.stress_passes >= 1, "steps/passes must be >= 1")
    need(c.pretrain.epochs >= 1 and c.bn_only.epochs >= 0, "epochs must be >= 1 (bn_only >= 0)")
    need(c.finetune.ghost_size >= 1, "ghost_size must be >= 1")
