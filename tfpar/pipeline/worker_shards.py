"""Each worker's share of every global batch, for pipeline replicas across
workers (`GPipe(..., data_parallel="workers")`).

Worker w of W trains on its slice of every global batch of B rows: rows
[w * B/W, (w + 1) * B/W) of each full batch, and a near-equal part of the
last one. Together the workers see, batch by batch, what one device sees.
Each worker then runs Keras' fit on its own rows with a batch of B/W, so
its local batch i is its slice of global batch i.

Example:
    >>> rows(10, 4, 2, 1).tolist()   # batches [0:4] [4:8] [8:10], worker 1
    [2, 3, 6, 7, 9]
"""

from __future__ import annotations

import keras
import numpy as np

from tfpar.core import inputs


def rows(count: int, batch: int, workers: int, index: int) -> np.ndarray:
    """The rows of `count` samples that worker `index` of `workers` trains on.

    Raises:
      ValueError: the last batch has fewer samples than there are workers
        (a worker would have no step to take while the others wait for it).
    """
    picked = []
    for start in range(0, count, batch):
        size = min(batch, count - start)
        if size < workers:
            raise ValueError(
                f"The last batch holds {size} sample(s), fewer than the {workers} workers, "
                f"so some worker would have nothing to train on in that step. Received "
                f"{count} samples with batch_size={batch}. Use a sample count whose "
                f"remainder modulo batch_size is 0 or >= {workers}."
            )
        base, extra = divmod(size, workers)
        first = start + index * base + min(index, extra)
        picked.append(np.arange(first, first + base + (index < extra)))
    return np.concatenate(picked) if picked else np.zeros([0], int)


def shard_fit(x, y, fit_kwargs: dict, config):
    """This worker's (x, y, fit_kwargs): its rows of the training and
    validation data, and the batch of one worker.

    Raises:
      ValueError: inputs that are not arrays (a Dataset or generator is
        already one stream per process: shard it yourself), or a last batch
        smaller than the worker count.
    """
    if not inputs.is_array_like(x):
        raise ValueError(
            'data_parallel="workers" splits each global batch among the workers, which '
            f"needs array inputs (numpy arrays or tensors). Received: x of type "
            f"{type(x).__name__}. Pass arrays, or use MultiWorker for a tf.data pipeline."
        )
    workers, index = config.num_workers, config.task_index
    kwargs = dict(fit_kwargs)
    batch = inputs.global_batch(x, kwargs)
    x, y, kwargs = inputs.split_validation(x, y, kwargs)
    picked = rows(inputs.sample_count(x), batch, workers, index)
    take = lambda data: None if data is None else keras.tree.map_structure(  # noqa: E731
        lambda a: np.asarray(a)[picked], data)
    x, y = take(x), take(y)
    if kwargs.get("sample_weight") is not None:
        kwargs["sample_weight"] = take(kwargs["sample_weight"])
    validation = kwargs.get("validation_data")
    if validation is not None:
        validation = tuple(validation)
        val_batch = kwargs.get("validation_batch_size") or batch
        if val_batch % workers:
            raise ValueError(f"validation_batch_size must be divisible by the {workers} workers. "
                             f"Received: validation_batch_size={val_batch}.")
        val_rows = rows(inputs.sample_count(validation[0]), val_batch, workers, index)
        kwargs["validation_data"] = tuple(
            None if part is None else keras.tree.map_structure(lambda a: np.asarray(a)[val_rows], part)
            for part in validation)
        if kwargs.get("validation_batch_size"):
            kwargs["validation_batch_size"] = val_batch // workers
    kwargs["batch_size"] = batch // workers
    return x, y, kwargs
