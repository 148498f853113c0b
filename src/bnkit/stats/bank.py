"""Named statistic sets kept on a model: one per domain, switched in place (AdaBN, DSBN).

``bnkit.stat_bank(model)`` is a mutable mapping ``name -> StatSet`` that lives on the model
itself (outside ``state_dict``), so it follows the model through ``copy.deepcopy`` and
``torch.save(model)``; :meth:`StatBank.state_dict` gives a plain nested dict for checkpoints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping

import torch.nn as nn
from torch import Tensor

from bnkit.errors import StatsError
from bnkit.layers.select import Where, unwrap
from bnkit.stats.sets import StatSet, capture_stats, check_fits, load_stats

__all__ = ["StatBank", "stat_bank"]

_ATTR = "_bnkit_stat_bank"


class StatBank(MutableMapping[str, StatSet]):
    """Named :class:`~bnkit.StatSet` s of one model; get it with :func:`stat_bank`.

    Examples:
        >>> import torch, torch.nn as nn, bnkit
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> bank = bnkit.stat_bank(model)
        >>> _ = bank.save("source")
        >>> _ = bnkit.recalibrate(model, [torch.randn(8, 3) + 2], progress=False)
        >>> _ = bank.save("target")
        >>> _ = bank.use("source")
        >>> sorted(bank)
        ['source', 'target']
    """

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._sets: dict[str, StatSet] = {}

    # ------------------------------------------------------------------ mapping
    def __getitem__(self, name: str) -> StatSet:
        try:
            return self._sets[name]
        except KeyError:
            known = ", ".join(repr(n) for n in self._sets) or "none yet"
            raise StatsError(
                f"no statistic set named {name!r} on this model; sets: {known}"
            ) from None

    def __setitem__(self, name: str, stats: StatSet) -> None:
        if not isinstance(stats, StatSet):
            raise StatsError(f"a bank holds bnkit.StatSet values (got {type(stats).__name__})")
        check_fits(self._model, stats, strict=False)
        self._sets[name] = stats

    def __delitem__(self, name: str) -> None:
        if name not in self._sets:
            self[name]  # raises the helpful error
        del self._sets[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sets)

    def __len__(self) -> int:
        return len(self._sets)

    def __repr__(self) -> str:
        return f"StatBank({', '.join(repr(n) for n in self._sets)})"

    # ------------------------------------------------------------------ switching
    def save(self, name: str, where: Where = None) -> StatSet:
        """Store a copy of the model's current statistics as ``name`` (replacing it)."""
        stats = capture_stats(self._model, where)
        self._sets[name] = stats
        return stats

    def use(self, name: str, *, strict: bool = True) -> nn.Module:
        """Load the set ``name`` into the model's layers (an exact copy); return the model."""
        return load_stats(self._model, self[name], strict=strict)

    @contextlib.contextmanager
    def using(self, name: str) -> Iterator[nn.Module]:
        """Load ``name`` for a ``with`` block; the statistics from before come back after."""
        stats = self[name]
        before = capture_stats(self._model, where=lambda n, _: n in stats.layers)
        load_stats(self._model, stats, strict=False)
        try:
            yield self._model
        finally:
            load_stats(self._model, before, strict=False, check_values=False)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        """``{name: statset.state_dict()}``: plain tensors, loadable with ``weights_only``."""
        return {name: stats.state_dict() for name, stats in self._sets.items()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Add (or replace) the sets of :meth:`state_dict`; each is checked against the model."""
        sets = {name: StatSet(tensors) for name, tensors in state.items()}
        for stats in sets.values():
            check_fits(self._model, stats, strict=False)
        self._sets.update(sets)


def stat_bank(model: nn.Module) -> StatBank:
    """The bank of named statistic sets of ``model`` (made empty on first use).

    The bank belongs to the model inside DDP/compile wrappers, so a wrapped and an unwrapped
    handle share it.
    """
    root = unwrap(model)
    bank = vars(root).get(_ATTR)
    if not isinstance(bank, StatBank):
        bank = StatBank(root)
        vars(root)[_ATTR] = bank
    return bank
