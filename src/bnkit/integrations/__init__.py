"""Trainer integrations: a BatchNorm policy held through a trainer's fit, with its numbers in
the trainer's logs.

* :mod:`bnkit.integrations.lightning` — :class:`~bnkit.integrations.lightning.BatchNormPolicy`,
  a Lightning ``Callback``;
* :mod:`bnkit.integrations.transformers` —
  :class:`~bnkit.integrations.transformers.BatchNormPolicyCallback`, a transformers
  ``TrainerCallback``.

Each submodule imports its trainer library when imported (a missing one raises
:class:`~bnkit.errors.MissingDependencyError`); this package and ``import bnkit`` import
neither.
"""

__all__: list[str] = []
