"""Managed BatchNorm layers: how a policy lives on a layer and runs in its forward.

* :mod:`~bnkit.layers.select` — finding and selecting BatchNorm layers;
* :mod:`~bnkit.layers.state` — the one state object of a managed layer;
* :mod:`~bnkit.layers.managed` — the class swap (a layer keeps its identity);
* :mod:`~bnkit.layers.paths` — the forward: the plan picks the statistics, ``functional``
  computes (:mod:`~bnkit.layers.inputs` checks the input, :mod:`~bnkit.layers.update` the
  running statistics, :mod:`~bnkit.layers.sync` the statistics across ranks);
* :mod:`~bnkit.layers.adapters` — layers whose own forward computes BatchNorm
  (:func:`register_layer`), with :mod:`~bnkit.layers.probe` checking the first forward of
  subclasses;
* :mod:`~bnkit.layers.manage` and :mod:`~bnkit.layers.surgery` — giving, saving and restoring.
"""

from bnkit.layers.adapters import LayerAdapter, register_layer
from bnkit.layers.managed import is_managed, original_class
from bnkit.layers.select import Where, bn_layers

__all__ = ["LayerAdapter", "Where", "bn_layers", "is_managed", "original_class", "register_layer"]
