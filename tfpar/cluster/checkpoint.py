"""Fault tolerance: save training state every N steps, resume at that step.

A checkpoint holds the model's weights, the optimizer's state and the data
position (steps done since the run's `initial_epoch`), written atomically so
a worker killed mid-write leaves the previous checkpoint intact. Only the
chief writes; every worker reads (on several hosts, `checkpoint_dir` must be
a shared filesystem). `fit_distributed(..., checkpoint_dir=..., checkpoint_every=N)`
loads the latest checkpoint, finishes the interrupted epoch from the next
batch, then runs the remaining epochs: with a deterministic data order
(`shuffle=False`), the result equals an uninterrupted run, redoing at most N
steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile

import keras
import numpy as np

from tfpar.core import inputs

_STATE, _POSITION = "state.npz", "position.json"


@dataclasses.dataclass
class State:
    weights: list[np.ndarray]
    optimizer: list[np.ndarray]
    step: int


def save(directory: str, model: keras.Model, step: int) -> None:
    """Writes `model`'s weights and optimizer state at `step`, atomically."""
    os.makedirs(directory, exist_ok=True)
    arrays = {f"w{i}": np.asarray(v.numpy()) for i, v in enumerate(model.weights)}
    arrays.update({f"o{i}": np.asarray(v.numpy()) for i, v in enumerate(model.optimizer.variables)})
    _atomic(directory, _STATE, lambda f: np.savez(f, **arrays), binary=True)
    position = {"step": step, "weights": len(model.weights), "optimizer": len(model.optimizer.variables)}
    _atomic(directory, _POSITION, lambda f: f.write(json.dumps(position)))


def load(directory: str) -> State | None:
    """The latest checkpoint in `directory`, or None if there is none."""
    path = os.path.join(directory, _POSITION)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        position = json.load(f)
    with np.load(os.path.join(directory, _STATE)) as arrays:
        weights = [arrays[f"w{i}"] for i in range(position["weights"])]
        optimizer = [arrays[f"o{i}"] for i in range(position["optimizer"])]
    return State(weights, optimizer, position["step"])


def restore(model: keras.Model, state: State) -> None:
    """Puts a checkpoint's weights and optimizer state into `model`.

    Raises:
      ValueError: the checkpoint was written for a different model.
    """
    shapes = [tuple(w.shape) for w in model.weights]
    if shapes != [w.shape for w in state.weights]:
        raise ValueError(
            f"The checkpoint does not fit model {model.name!r}: weight shapes "
            f"{[w.shape for w in state.weights]} vs the model's {shapes}. Use "
            "another checkpoint_dir, or delete the old checkpoint."
        )
    model.set_weights(state.weights)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    for variable, value in zip(model.optimizer.variables, state.optimizer):
        variable.assign(value)


def clear(directory: str) -> None:
    """Removes the checkpoint after a run completes."""
    for name in (_POSITION, _STATE):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            os.remove(path)


class StepCheckpoint(keras.callbacks.Callback):
    """Saves a checkpoint every `every` training steps (the chief only).

    Args:
      directory: where checkpoints go.
      every: steps between checkpoints.
      start_step: steps already done when this run starts (after a resume).
      writer: whether this process writes (the chief) or only counts.
    """

    def __init__(self, directory: str, every: int, *, start_step: int = 0, writer: bool = True):
        super().__init__()
        self.directory, self.every, self.writer = directory, every, writer
        self.step = start_step

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0 and self.writer:
            save(self.directory, self.model, self.step)


def _atomic(directory: str, name: str, write, binary: bool = False) -> None:
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
    with os.fdopen(handle, "wb" if binary else "w") as f:
        write(f)
    os.replace(temporary, os.path.join(directory, name))


def resumable_fit(fit, x, y, fit_kwargs: dict, directory: str, every: int, *,
                  start_step: int, writer: bool) -> keras.callbacks.History:
    """Runs `fit(x, y, kwargs)` from data position `start_step`, checkpointing.

    The interrupted epoch is finished from its next batch (one fit call on
    the remaining rows), then the remaining epochs run (a second call);
    their histories are joined. Validation data is split off first, exactly
    as Keras does for `validation_split`, so both calls validate alike.
    """
    kwargs = dict(fit_kwargs)
    x, y, kwargs = inputs.split_validation(x, y, kwargs)
    batch = kwargs.get("batch_size") or inputs.KERAS_DEFAULT_BATCH
    count = int(keras.tree.flatten(x)[0].shape[0])
    steps_per_epoch = -(-count // batch)
    epochs, epoch = kwargs.get("epochs", 1), kwargs.get("initial_epoch", 0) + start_step // steps_per_epoch
    offset = start_step % steps_per_epoch
    kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [
        StepCheckpoint(directory, every, start_step=start_step, writer=writer)
    ]
    histories = []
    if offset and epoch < epochs:
        rest = lambda data: _rows(data, offset * batch)  # noqa: E731
        part = dict(kwargs, initial_epoch=epoch, epochs=epoch + 1)
        if part.get("sample_weight") is not None:
            part["sample_weight"] = rest(part["sample_weight"])
        histories.append(fit(rest(x), rest(y), part))
        epoch += 1
    if epoch < epochs:
        histories.append(fit(x, y, dict(kwargs, initial_epoch=epoch, epochs=epochs)))
    return _join(histories)


def _rows(data, start: int):
    return None if data is None else keras.tree.map_structure(lambda a: a[start:], data)


def _join(histories) -> keras.callbacks.History:
    if not histories:
        return keras.callbacks.History()
    joined = histories[-1]
    if len(histories) > 1:
        first = histories[0]
        joined.epoch = first.epoch + joined.epoch
        joined.history = {k: first.history.get(k, []) + v for k, v in joined.history.items()}
    return joined
