"""`fit_distributed`: `model.fit`, spread over devices by a strategy."""

from __future__ import annotations

import inspect
import logging
import warnings

import keras
import tensorflow as tf

from tfpar.cluster import checkpoint, chief
from tfpar.comm.powersgd import PowerSGD
from tfpar.core import checks, inputs, internals, replica
from tfpar.strategies import contract, registry

_LOG = logging.getLogger("tfpar")
_FIT_ARGS = frozenset(inspect.signature(keras.Model.fit).parameters) - {"self", "x", "y"}


def fit_distributed(
    model: keras.Model,
    x=None,
    y=None,
    *,
    strategy="mirrored",
    checkpoint_dir: str | None = None,
    checkpoint_every: int | None = None,
    **fit_kwargs,
) -> keras.callbacks.History:
    """Trains `model` like `model.fit`, with its work spread by `strategy`.

    A drop-in for `model.fit`: same arguments, same meaning (numpy arrays,
    `tf.data.Dataset`, `keras.utils.PyDataset`, validation, callbacks,
    `class_weight`, `sample_weight`, `initial_epoch`, ...), same `History`.
    `batch_size` is the global batch, split evenly across replicas.

    Build and compile the model as usual, outside any strategy scope. Data
    parallel strategies train the caller's model object itself, its
    variables moved into the strategy's scope for the duration
    (`tfpar.core.in_place`); pipelines train a twin placed on their devices with
    identical weights, optimizer configuration and state, loss and metrics,
    and write the trained weights and optimizer state back (callbacks see
    the twin during training). Either way `model.evaluate`, `model.predict`
    or `model.save` right after see the trained model. If training raises,
    the caller's model is left exactly as it was. A model built inside a
    strategy's scope is trained as it is under that strategy.

    With data parallel, a batch the replicas do not divide (an epoch's last,
    a small validation set) is padded to equal shares with weight-0 samples,
    so gradients, losses and metrics stay those of one device. An unbuilt
    Sequential is built from the data's shape first, as `model.fit` does.

    Args:
      model: a compiled `keras.Model`.
      x: training inputs, as for `model.fit`.
      y: training targets, as for `model.fit`.
      strategy: a tfpar strategy object, a name ("mirrored", "split",
        "gpipe", "multi_worker"), any `tf.distribute.Strategy`, or "auto":
        `tfpar.plan` predicts every layout on the local devices for this
        batch size and trains with the fastest that fits (its name and
        reason are printed, or logged with verbose=0).
      checkpoint_dir: save model, optimizer state and data position here
        every `checkpoint_every` steps, and resume from the latest checkpoint
        when started again (after a crash or a killed worker); the checkpoint
        is removed when training completes. Needs array inputs; exact
        (equal to an uninterrupted run) with `shuffle=False`.
      checkpoint_every: steps between checkpoints (required with
        `checkpoint_dir`).
      **fit_kwargs: any other argument of `keras.Model.fit`.

    Returns:
      The `keras.callbacks.History` of the run; `history.model` is `model`.

    Example:
        >>> (x, y), _ = tfpar.datasets.digits()
        >>> model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
        ...                           keras.layers.Dense(10, activation="softmax")])
        >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
        ...               metrics=["accuracy"])
        >>> history = tfpar.fit_distributed(model, x, y, batch_size=64, epochs=5, verbose=0,
        ...                                 strategy=tfpar.strategies.DataParallel(2))
        >>> history.history["accuracy"][-1] > 0.5  # 0.1 is chance
        True
    """
    replica.check_compiled(model)
    checks.keras_arguments("fit_distributed", "fit", fit_kwargs, _FIT_ARGS)
    _check_checkpointing(checkpoint_dir, checkpoint_every, x, fit_kwargs)
    if isinstance(strategy, str) and strategy == "auto":
        strategy = _planned(model, x, fit_kwargs)
    strategy = strategy_for(model, strategy)
    runner = contract.for_strategy(strategy)
    if checkpoint_dir and runner.shard is not None:
        raise ValueError(
            f"checkpoint_dir with shard={runner.shard!r}: tfpar's checkpoints hold the whole "
            "optimizer state, which sharded training keeps in the replicas' shares, and do not "
            "gather it yet. Use shard=None with checkpoint_dir, or save the model after training "
            "(it holds the full state then).")
    if checkpoint_dir and isinstance(runner.compression, PowerSGD):
        # Its error feedback and warm start live in the all-reduce, not in
        # the model or optimizer the checkpoint holds.
        warnings.warn(
            "checkpoint_dir with compression='powersgd': the checkpoint holds the weights and "
            "the optimizer state, not PowerSGD's error feedback, which restarts from zero where "
            "a run resumes (and where the interrupted epoch's remainder ends). A resumed run "
            "then differs slightly from an uninterrupted one; without compression (and with "
            "shuffle=False) it is exact.",
            stacklevel=2)
    inputs.check_not_empty(x)
    inputs.check_shapes(model, x)
    runner.check_fit(x, fit_kwargs)
    writer = runner.is_chief
    home = home_strategy(model) is strategy
    if not home:
        build_from_data(model, x)
    state = checkpoint.load(checkpoint_dir) if checkpoint_dir else None
    if state is not None:
        checkpoint.restore(model, state)
    trained = model if home else runner.recreate(model)
    try:
        with chief.only_chief_writes(fit_kwargs.get("callbacks"), writer):
            if checkpoint_dir:
                history = checkpoint.resumable_fit(
                    lambda xs, ys, kwargs: runner.fit(trained, xs, ys, kwargs), x, y, fit_kwargs,
                    checkpoint_dir, checkpoint_every, start_step=state.step if state else 0,
                    writer=writer,
                )
            else:
                history = runner.fit(trained, x, y, fit_kwargs)
    except BaseException:
        if not home:
            runner.discard(trained, model)
        raise
    if checkpoint_dir and writer:
        checkpoint.clear(checkpoint_dir)
    if home:
        return history
    runner.write_back(trained, model)
    _hand_over(model, history, fit_kwargs.get("callbacks"))
    return history


def _check_checkpointing(directory, every, x, fit_kwargs: dict) -> None:
    if directory is None and every is None:
        return
    if directory is None or not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(
            "Checkpointing needs both checkpoint_dir and checkpoint_every (a whole "
            f"number of steps >= 1). Received: checkpoint_dir={directory!r}, "
            f"checkpoint_every={every!r}."
        )
    if not inputs.is_array_like(x) or fit_kwargs.get("steps_per_epoch"):
        raise ValueError(
            "checkpoint_dir resumes at a step of the data, so it needs array "
            "inputs (numpy arrays or tensors) without steps_per_epoch. Received: "
            f"x of type {type(x).__name__}, steps_per_epoch={fit_kwargs.get('steps_per_epoch')!r}."
        )
    if fit_kwargs.get("shuffle", True):
        warnings.warn(
            "checkpoint_dir resumes exactly only with shuffle=False: a resumed run finishes the "
            "interrupted epoch on the rows stored after the last checkpointed step, not on the "
            "rows that epoch's shuffle had left, so it differs from an uninterrupted run. Pass "
            "shuffle=False (shuffle the arrays once beforehand) for an exact resume.",
            stacklevel=3)


def build_from_data(model: keras.Model, x) -> None:
    """Builds an unbuilt Sequential from the data's shape, as `model.fit`
    does on its first batch: its own initializers then draw the initial
    weights, which the twin copies (a clone's initializers draw others)."""
    if model.built or not isinstance(model, keras.Sequential):
        return
    shapes = inputs.input_shapes(x)
    if isinstance(shapes, list) and len(shapes) == 1:
        model.build((None, *shapes[0][1:]))


def _planned(model: keras.Model, x, fit_kwargs: dict):
    """The strategy `tfpar.plan` chooses for this model and batch."""
    from tfpar import planner  # the planner measures: only when asked for

    if home_strategy(model) is not None:
        raise ValueError(
            f"strategy='auto' chooses a layout and recreates the model under it, but model "
            f"{model.name!r} was built inside the scope of {home_strategy(model)!r}. Build it "
            "outside any strategy scope, or pass strategy=model.distribute_strategy.")
    batch = inputs.global_batch(x, fit_kwargs)
    if batch is None:
        raise ValueError(
            "strategy='auto' plans for a batch size, which it reads from array inputs and "
            f"batch_size. Received x of type {type(x).__name__}. Pass numpy arrays, or plan "
            "yourself: tfpar.plan(model, batch_size).chosen.strategy.")
    inputs.check_not_empty(x)
    build_from_data(model, x)
    chosen = planner.plan(model, batch).chosen
    message = f"tfpar strategy='auto': {chosen.name} ({chosen.reason})"
    _LOG.info(message)
    if fit_kwargs.get("verbose", "auto") != 0:
        print(message)
    return chosen.strategy


def home_strategy(model: keras.Model):
    """The strategy whose scope built `model`, or None."""
    return internals.home_strategy(model)


def strategy_for(model: keras.Model, requested) -> tf.distribute.Strategy:
    home = home_strategy(model)
    if home is None:
        return registry.resolve(requested)
    if requested is home:
        return home
    if isinstance(requested, str) and isinstance(home, registry.class_for_name(requested)):
        return home
    raise ValueError(
        f"Model {model.name!r} was built inside the scope of {home!r}, so it can "
        f"only be trained under that strategy. Received: strategy={requested!r}. "
        "Pass strategy=model.distribute_strategy, or build the model outside "
        "any strategy scope and let fit_distributed recreate it."
    )


def _hand_over(model: keras.Model, history: keras.callbacks.History, callbacks) -> None:
    """Points History and the user's callbacks at the caller's model."""
    history.set_model(model)
    model.history = history
    for callback in callbacks or ():
        callback.set_model(model)
