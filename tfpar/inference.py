"""`predict_distributed` and `evaluate_distributed`: `model.predict` and
`model.evaluate`, spread over devices by a strategy.

They are to `predict` and `evaluate` what `fit_distributed` is to `fit`:
same arguments, same results, the caller's model untouched. tfpar runs
Keras' own method on the caller's model moved into the strategy's scope
(data parallel) or on a placed twin of it (pipelines). Data parallel strategies give each replica an equal
share of every batch. Pipelines (`GPipe`) cut each batch into M micro-batches
that flow through the stages concurrently: while stage 1 predicts
micro-batch 0, stage 0 already runs micro-batch 1; `ModelSplit` (M = 1)
runs the stages one after another.

Example:
    >>> strategy = tfpar.strategies.GPipe(2, microbatches=4)
    >>> predictions = tfpar.predict_distributed(model, x, strategy=strategy, verbose=0)
    >>> predictions.shape == model.predict(x, verbose=0).shape
    True
"""

from __future__ import annotations

import inspect

import keras

from tfpar import fit as fit_lib
from tfpar.core import checks, inputs
from tfpar.strategies import contract

_PREDICT_ARGS = frozenset(inspect.signature(keras.Model.predict).parameters) - {"self", "x"}
_EVALUATE_ARGS = frozenset(inspect.signature(keras.Model.evaluate).parameters) - {"self", "x", "y"}


def predict_distributed(model: keras.Model, x, *, strategy="mirrored", **predict_kwargs):
    """Predicts like `model.predict(x, **predict_kwargs)`, spread by `strategy`.

    Args:
      model: a built `keras.Model` (compiled or not).
      x: inputs, as for `model.predict`.
      strategy: as for `fit_distributed`.
      **predict_kwargs: any other argument of `keras.Model.predict`.

    Returns:
      What `model.predict` returns: the predictions, in the order of `x`.

    Example:
        >>> predictions = tfpar.predict_distributed(model, x, verbose=0,
        ...                                         strategy=tfpar.strategies.DataParallel(2))
    """
    checks.keras_arguments("predict_distributed", "predict", predict_kwargs, _PREDICT_ARGS)
    twin, runner, home = _twin(model, x, strategy)
    try:
        return runner.predict(twin, x, predict_kwargs)
    finally:
        if not home:
            runner.discard(twin, model)


def evaluate_distributed(model: keras.Model, x=None, y=None, *, strategy="mirrored",
                         **evaluate_kwargs):
    """Evaluates like `model.evaluate(x, y, **evaluate_kwargs)`, spread by `strategy`.

    Args:
      model: a compiled `keras.Model`.
      x, y: inputs and targets, as for `model.evaluate`.
      strategy: as for `fit_distributed`.
      **evaluate_kwargs: any other argument of `keras.Model.evaluate`.

    Returns:
      What `model.evaluate` returns: the loss, or a list of the loss and the
      metrics (a dict with `return_dict=True`).

    Example:
        >>> results = tfpar.evaluate_distributed(
        ...     model, x, y, verbose=0, strategy=tfpar.strategies.GPipe(2, microbatches=4))
    """
    checks.keras_arguments("evaluate_distributed", "evaluate", evaluate_kwargs, _EVALUATE_ARGS)
    if not getattr(model, "compiled", False):
        raise ValueError(
            f"Model {model.name!r} must be compiled before it is evaluated: call "
            "model.compile(loss=..., metrics=...) first, as for model.evaluate. "
            "Received: an uncompiled model."
        )
    twin, runner, home = _twin(model, x, strategy)
    try:
        return runner.evaluate(twin, x, y, evaluate_kwargs)
    finally:
        if not home:
            runner.discard(twin, model)


def _twin(model: keras.Model, x, strategy):
    strategy = fit_lib.strategy_for(model, strategy)
    inputs.check_not_empty(x)
    inputs.check_shapes(model, x)
    runner = contract.for_strategy(strategy)
    if fit_lib.home_strategy(model) is strategy:
        return model, runner, True
    fit_lib.build_from_data(model, x)
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} must be built before it is run under a strategy: give "
            "it a keras.Input(...) or call model.build(input_shape) (or fit it first)."
        )
    return runner.recreate(model), runner, False
