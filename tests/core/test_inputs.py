import keras
import numpy as np
import tensorflow as tf

from tfpar.core import inputs


def test_sample_count_of_each_input_kind():
    x = np.zeros((10, 3))
    assert inputs.sample_count(x) == 10
    assert inputs.sample_count({"a": x, "b": x}) == 10
    assert inputs.sample_count([x, x]) == 10
    assert inputs.sample_count(tf.zeros((7, 2))) == 7
    assert inputs.sample_count(tf.data.Dataset.range(10).batch(3)) == 4
    assert inputs.sample_count(tf.data.Dataset.range(10).repeat()) is None
    assert inputs.sample_count(tf.data.Dataset.range(10).filter(lambda v: v > 3)) is None


def test_global_batch_is_keras_default_for_arrays_only():
    x = np.zeros((10, 3))
    assert inputs.global_batch(x, {}) == 32
    assert inputs.global_batch(x, {"batch_size": 8}) == 8
    assert inputs.global_batch(tf.data.Dataset.range(3), {"batch_size": 8}) is None


def test_check_not_empty_passes_unknown_sizes():
    inputs.check_not_empty(tf.data.Dataset.range(10).repeat())
    inputs.check_not_empty(np.zeros((1, 3)))


def test_py_dataset_is_not_array_like():
    class Seq(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return np.zeros((1, 1)), np.zeros((1,))

    assert not inputs.is_array_like(Seq())
    assert inputs.sample_count(Seq()) == 2
