"""Strategy names: what `fit_distributed(strategy="...")` accepts."""

from __future__ import annotations

import tensorflow as tf

from tfpar.strategies.data_parallel import DataParallel
from tfpar.strategies.gpipe import GPipe
from tfpar.strategies.model_split import ModelSplit
from tfpar.strategies.multi_worker import MultiWorker
from tfpar.strategies.pipeline_strategy import PipelineStrategy

# Each name maps to the class it builds with default arguments.
_NAMES = {"mirrored": DataParallel, "split": ModelSplit, "gpipe": GPipe, "multi_worker": MultiWorker}


def names() -> list[str]:
    """Returns the strategy names `fit_distributed` accepts."""
    return sorted(_NAMES)


def resolve(strategy) -> tf.distribute.Strategy:
    """Returns a strategy object for a name, a tfpar strategy or a tf one.

    Raises:
      ValueError: an unknown name (the valid ones are listed).
      TypeError: anything that is neither a name nor a strategy.
    """
    if isinstance(strategy, str):
        if strategy not in _NAMES:
            raise ValueError(
                f"Unknown strategy name {strategy!r}. Valid names: {names()}; "
                "or pass a strategy object such as "
                "tfpar.strategies.DataParallel(devices=2) or any "
                "tf.distribute.Strategy."
            )
        if strategy == "multi_worker":
            return MultiWorker.current()
        return _NAMES[strategy]()
    if isinstance(strategy, (tf.distribute.Strategy, PipelineStrategy)):
        return strategy
    raise TypeError(
        "strategy must be a name, a tfpar strategy or a tf.distribute.Strategy. "
        f"Received: strategy={strategy!r} of type {type(strategy).__name__}. "
        f"Valid names: {names()}."
    )


def class_for_name(name: str) -> type:
    """Returns the strategy class a name stands for."""
    return _NAMES[name]
