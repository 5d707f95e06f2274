"""`describe_placement`: which layers each device runs under a strategy.

Above both the placement of layers (`placement.py`) and the strategies
that use it: a strategy that splits the model describes its own stages, a
tf.distribute strategy holds every layer on each replica.
"""

from __future__ import annotations

import keras

from tfpar.pipeline import costs as costs_lib, placement
from tfpar.strategies import registry


def describe_placement(model: keras.Model, strategy, *, show: bool = True) -> placement.Placement:
    """Returns (and prints) which layers each device runs under `strategy`.

    Args:
      model: a built Sequential or functional model.
      strategy: a ModelSplit / GPipe object, a name, or a tf.distribute
        strategy (whose replicas each hold every layer).
      show: print the table.

    Example:
        >>> model = tfpar.models.mlp(64, 10)
        >>> placement = tfpar.describe_placement(model, tfpar.strategies.GPipe(2))
        stage  device         layers             count  params  est. FLOPs/sample
        -----  -------------  -----------------  -----  ------  -----------------
        0      /device:CPU:0  dense_0            1      8,320   16,512
        1      /device:CPU:1  dense_1 .. logits  2      8,906   17,738
    """
    strategy = registry.resolve(strategy)
    if hasattr(strategy, "describe"):
        table = strategy.describe(model)
    else:
        ops = placement.layers(model)
        devices = list(strategy.extended.worker_devices)
        table = placement.Placement([
            (i, d, f"all {len(ops)} layers (replica {i})", len(ops),
             f"{sum(costs_lib.params(op) for op in ops):,}",
             f"{sum(costs_lib.flops(op) for op in ops):,}")
            for i, d in enumerate(devices)
        ])
    if show:
        print(table)
    return table
