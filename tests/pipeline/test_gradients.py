"""Gradient sums: overwrite at each step's start, sparse kept sparse, the
one-device check names what differs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpar.core import microbatch
from tfpar.pipeline import gradients


def test_each_step_starts_a_fresh_sum():
    w = keras.Variable(np.zeros(2, "float32"), name="w")
    sums = gradients.GradientSum([w])
    sums.begin([])
    sums.add(w, tf.constant([1.0, 2.0]))
    sums.add(w, tf.constant([1.0, 2.0]))
    assert sums.result([w])[0].numpy().tolist() == [2.0, 4.0]
    sums.begin([])  # the next step: last step's sum is overwritten, not added to
    sums.add(w, tf.constant([0.5, 0.5]))
    assert sums.result([w])[0].numpy().tolist() == [0.5, 0.5]
    sums.begin([])
    assert sums.result([w]) == [None]  # no gradient this step stays None, not zeros


def test_sparse_gradients_stay_sparse_and_dense_plus_sparse_is_dense():
    table = keras.Variable(np.zeros((4, 1), "float32"), name="table")

    sums = gradients.GradientSum([table])

    @tf.function  # the kind of lookup is read from the step's graph
    def step(ids):
        sums.begin([ids])
        for part, value in zip(tf.split(ids, 2), (1.0, 2.0)):
            sums.add(table, tf.IndexedSlices(tf.constant([[value]]), part, tf.constant([4, 1])))
        grad = sums.result([table])[0]
        assert isinstance(grad, tf.IndexedSlices)
        sums.add(table, tf.ones((4, 1)))
        return grad.indices, sums.result([table])[0]

    indices, dense = step(tf.constant([1, 3]))
    assert indices.numpy().tolist() == [1, 3]
    assert dense.numpy().ravel().tolist() == [1.0, 2.0, 1.0, 3.0]


def test_an_eager_step_is_refused_with_what_to_do():
    table = keras.Variable(np.zeros((4, 1), "float32"), name="table")
    sums = gradients.GradientSum([table])
    sums.begin([])
    for ids in ([1], [3]):
        sums.add(table, tf.IndexedSlices(tf.constant([[1.0]]), tf.constant(ids), tf.constant([4, 1])))
    with pytest.raises(ValueError, match="run_eagerly=False"):
        sums.result([table])


def test_combined_slices_match_the_dense_sum_for_both_kinds_of_lookup():
    shape = tf.constant([5, 2])
    per_sample = [tf.IndexedSlices(tf.ones((2, 2)) * k, tf.constant(ids), shape)
                  for k, ids in ((1.0, [0, 2]), (2.0, [2, 4]))]
    shared = [tf.IndexedSlices(tf.ones((2, 2)) * k, tf.constant([0, 1]), shape) for k in (1.0, 2.0)]
    for slices, kind in ((per_sample, True), (shared, False)):
        dense = sum(tf.convert_to_tensor(s) for s in slices)
        combined = microbatch.combine_slices(slices, per_sample=kind)
        np.testing.assert_array_equal(tf.convert_to_tensor(combined), dense)
    assert microbatch.combine_slices(shared, per_sample=False).indices.numpy().tolist() == [0, 1]
    assert microbatch.combine_slices(shared, per_sample=True).indices.numpy().tolist() == [0, 1, 0, 1]


def test_the_kind_of_lookup_is_read_from_the_graph_not_from_the_ids():
    # Segment ids that are all 0 in every micro-batch are still one row per
    # sample; positions made inside the step are one row per position.
    table = keras.Variable(np.zeros((4, 1), "float32"), name="table")

    sums = gradients.GradientSum([table])

    @tf.function
    def step(segments):
        sums.begin([segments])
        for part in tf.split(segments, 2):
            sums.add(table, tf.IndexedSlices(tf.ones((2, 1)), part, tf.constant([4, 1])))
        from_batch = sums.result([table])[0]
        sums.begin([segments])
        for _ in range(2):
            sums.add(table, tf.IndexedSlices(tf.ones((2, 1)), tf.range(2), tf.constant([4, 1])))
        return from_batch.indices, sums.result([table])[0]

    per_sample, positions = step(tf.zeros(4, tf.int32))
    assert per_sample.numpy().tolist() == [0, 0, 0, 0]
    assert positions.indices.numpy().tolist() == [0, 1]
    assert positions.values.numpy().ravel().tolist() == [2.0, 2.0]


def test_the_check_names_lost_and_extra_gradients_with_their_stage():
    a, b = keras.Variable(1.0, name="a"), keras.Variable(1.0, name="b")
    gradients.check_same_as_one_device([True, False], [a, b], [tf.constant(1.0), None], {})
    gradients.check_same_as_one_device(None, [a], [None], {})  # nothing known yet: no check
    with pytest.raises(ValueError, match=r"no gradient reached 'a'.*'b' got a gradient that one device does not give"):
        gradients.check_same_as_one_device([True, False], [a, b], [None, tf.constant(1.0)], {})
