"""Micro-batches: shares that sum to one, padding only below M, nothing lost."""

import numpy as np
import pytest
import tensorflow as tf

from tfpar.core.microbatch import MicroBatches, split_sizes


@pytest.mark.parametrize("batch, parts", [(7, 3), (8, 4), (2, 4), (1, 2), (5, 1)])
def test_every_sample_is_in_exactly_one_micro_batch_and_shares_sum_to_one(batch, parts):
    x = tf.reshape(tf.range(batch * 2, dtype=tf.float32), (batch, 2))
    y = tf.range(batch)
    micro = MicroBatches([x], {"label": y}, None, parts)
    real = [int(r) for r in micro.real]
    assert sum(real) == batch and all(r >= 1 for r in real[:min(batch, parts)])
    # The real samples of each micro-batch come first; put back in order
    # they are the batch itself, whatever padding was added.
    kept = np.concatenate([micro.x[m][0].numpy()[:real[m]] for m in range(parts)])
    np.testing.assert_array_equal(kept, x.numpy())
    labels = np.concatenate([micro.y[m]["label"].numpy()[:real[m]] for m in range(parts)])
    np.testing.assert_array_equal(labels, y.numpy())
    assert sum(float(micro.share(m, tf.float64)) for m in range(parts)) == pytest.approx(1.0)
    assert micro.sample_weight == [None] * parts
    merged = micro.merge([micro.x[m][0] for m in range(parts)])
    assert merged.shape[0] == batch


def test_a_batch_smaller_than_m_gives_no_empty_micro_batch():
    micro = MicroBatches([tf.ones((2, 3))], None, None, 4)
    assert [int(tf.shape(part[0])[0]) for part in micro.x] == [1, 1, 1, 1]
    assert [float(micro.share(m, tf.float64)) for m in range(4)] == [0.5, 0.5, 0.0, 0.0]


def test_split_sizes_are_near_equal_larger_first():
    assert split_sizes(tf.constant(10), 4).numpy().tolist() == [3, 3, 2, 2]


def test_mean_and_sum_over_batch_size_are_averages_sum_is_not():
    # Keras divides by the batch's rows for both "mean" and its default;
    # the data-parallel and pipeline checks share this one rule.
    import keras

    from tfpar.core.microbatch import unaveraged_losses

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    for reduction, refused in (("mean", False), ("sum_over_batch_size", False), ("sum", True)):
        model.compile(optimizer="sgd", loss=keras.losses.MeanSquaredError(reduction=reduction))
        assert bool(unaveraged_losses(model)) is refused, reduction
