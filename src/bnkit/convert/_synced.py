"""Home of the synchronized classes that :func:`bnkit.to_sync` makes from BatchNorm subclasses.

A made class is named here by an encoding of the class it was made from, and this module's
``__getattr__`` makes it again from that name, so pickle (``torch.save(model)``) finds it in
any process that can import the original class.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__: list[str] = []

PREFIX = "_bnkit_sync_"


def export_name(cls: type) -> str:
    """The attribute name under which this module serves the class made from ``cls``."""
    return PREFIX + f"{cls.__module__}:{cls.__qualname__}".encode().hex()


def __getattr__(name: str) -> Any:
    if not name.startswith(PREFIX):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, _, qualname = bytes.fromhex(name[len(PREFIX) :]).decode().partition(":")
    source: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        source = getattr(source, part)
    from bnkit.convert.sync import sync_class

    return sync_class(source)
