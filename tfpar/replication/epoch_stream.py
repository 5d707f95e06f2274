"""Array inputs as one input stream for the whole fit, under MultiWorker.

Keras' fit (3.15) makes a new input iterator at every epoch's end and again
at the next epoch's start, and drops the old ones. Under
`MultiWorkerMirroredStrategy` (TensorFlow 2.21) dropping a used iterator
blocks its worker: measured 2.3 to 2.5 s at most epoch starts on the
two-worker bench, whose epochs take 2.3 s, and 4 to 25 s when fit returns.
So for array inputs tfpar hands fit one dataset that holds every epoch, with
`steps_per_epoch` set: Keras then keeps one iterator for the whole fit.

Each epoch's batches are fit's own: the row order of every epoch comes from
Keras' own `ArrayDataAdapter`, one per epoch over the row indices (under a
global seed the same permutation each epoch, as fit's fresh iterators give;
without one a new permutation each epoch), and the rows are gathered from
the inputs as that adapter does, class weights and sample weights included.

Example:
    >>> x, y = np.zeros((10, 3), "float32"), np.arange(10)
    >>> _, _, kwargs = fit_arguments(x, y, {"batch_size": 4, "epochs": 3})
    >>> kwargs["steps_per_epoch"], kwargs["epochs"]
    (3, 3)
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf

from tfpar.core import inputs, internals


def fit_arguments(x, y, fit_kwargs: dict):
    """(x, y, fit_kwargs) that train exactly as `fit(x, y, **fit_kwargs)`
    does, from one dataset; None where fit's own path is kept: inputs that
    are not numpy arrays or dense tensors, `steps_per_epoch`, or nothing to
    train."""
    if fit_kwargs.get("steps_per_epoch") or not _dense_arrays((x, y, fit_kwargs.get("sample_weight"))):
        return None
    kwargs = dict(fit_kwargs)
    x, y, kwargs = inputs.split_validation(x, y, kwargs)
    batch = kwargs.pop("batch_size", None) or inputs.KERAS_DEFAULT_BATCH
    shuffle = kwargs.pop("shuffle", True)
    data = internals.array_batches(x, y, sample_weight=kwargs.pop("sample_weight", None), batch_size=batch,
                                   class_weight=kwargs.pop("class_weight", None))
    epochs = kwargs.get("epochs", 1) - kwargs.get("initial_epoch", 0)
    if epochs < 1 or not data.num_batches:
        return None
    rows = np.arange(internals.array_count(data), dtype="int64")
    orders = [internals.array_batches(rows, batch_size=batch, shuffle=shuffle).get_tf_dataset()
              for _ in range(epochs)]
    # An index adapter yields 1-tuples (its only input); the map unwraps them.
    order = functools.reduce(lambda a, b: a.concatenate(b), orders).map(lambda picked: picked)
    kwargs["steps_per_epoch"], kwargs["shuffle"] = data.num_batches, False  # the order is in the data
    if kwargs.get("validation_data") is not None:
        kwargs.setdefault("validation_batch_size", batch)  # fit's default: batch_size
    return _gathered(order, internals.array_inputs(data), shuffle), None, kwargs


def _gathered(order: tf.data.Dataset, sliceable, shuffle) -> tf.data.Dataset:
    """The batches of rows `order` names, as ArrayDataAdapter slices them."""
    dataset = tf.data.Dataset.zip((order, tf.data.Dataset.from_tensors(sliceable).repeat()))
    dataset = dataset.map(lambda picked, data: keras.tree.map_structure(
        lambda a: tf.gather(a, picked, axis=0), data), num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    if shuffle:
        options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def _dense_arrays(data) -> bool:
    leaves = [leaf for leaf in keras.tree.flatten(data) if leaf is not None]
    return bool(leaves) and all(isinstance(leaf, np.ndarray) or (tf.is_tensor(leaf) and not isinstance(
        leaf, tf.SparseTensor | tf.RaggedTensor)) for leaf in leaves)
