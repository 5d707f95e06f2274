"""Padding uneven batches to equal replica shares: the marks and shapes.

End-to-end exactness of padded training is in tests/test_fit.py and the
conformance catalogue (uneven idioms under DataParallel and two workers).
"""

import numpy as np
import tensorflow as tf

from tfpar.replication.equal_shares import pad_dataset


def batches(dataset):
    return [tuple(np.asarray(t) for t in element) for element in dataset]


def test_a_short_batch_is_padded_by_repeating_its_first_sample_with_weight_zero():
    x = np.arange(7 * 2, dtype="float32").reshape(7, 2)
    y = np.arange(7)
    (first_x, first_y, first_marks), (x2, y2, marks2) = batches(
        pad_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), 2))
    np.testing.assert_array_equal(first_marks, [1, 1, 1, 1])  # divisible: unchanged
    np.testing.assert_array_equal(first_x, x[:4])
    # 3 real samples -> 4 rows; real rows weigh 4/3 so the mean over 4 rows
    # is the mean over the 3 real ones.
    np.testing.assert_array_equal(x2, np.concatenate([x[4:], x[4:5]]))
    np.testing.assert_array_equal(y2, [4, 5, 6, 4])
    np.testing.assert_allclose(marks2, [4 / 3, 4 / 3, 4 / 3, 0])


def test_sample_weights_are_padded_and_kept_apart_from_the_marks():
    x, y, w = np.ones((3, 1), "float32"), np.zeros(3), np.array([0.5, 2.0, 1.0], "float32")
    ((_, _, weights, marks),) = batches(pad_dataset(tf.data.Dataset.from_tensor_slices((x, y, w)).batch(3), 4))
    np.testing.assert_array_equal(weights, [0.5, 2.0, 1.0, 0.5])
    np.testing.assert_allclose(marks, [4 / 3, 4 / 3, 4 / 3, 0])


def test_sum_losses_keep_real_rows_at_weight_one_and_data_without_targets_passes():
    x, y = np.ones((3, 1), "float32"), np.zeros(3)
    ((_, _, marks),) = batches(pad_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(3), 2,
                                           scale_real=False))
    np.testing.assert_array_equal(marks, [1, 1, 1, 0])
    inputs_only = tf.data.Dataset.from_tensor_slices(x).batch(3)
    assert pad_dataset(inputs_only, 2) is inputs_only
