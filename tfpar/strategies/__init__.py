"""Strategies: how a model's training is spread over devices.

One module per strategy. Those that TensorFlow's model fits are
`tf.distribute.Strategy` subclasses (`DataParallel`); `registry` maps the
names users pass to `fit_distributed` onto them.
"""

from tfpar.strategies.data_parallel import DataParallel

__all__ = ["DataParallel"]
