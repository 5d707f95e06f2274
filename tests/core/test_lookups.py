"""Whether a lookup's ids come from the batch, read from the step's graph."""

import pytest
import tensorflow as tf

from tfpar.core import lookups


def test_ids_from_the_batch_and_ids_made_inside_the_step():
    seen = {}

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.int32)])  # as Keras traces: any batch
    def step(tokens):
        segments = tf.zeros_like(tokens)  # all 0, still per sample
        positions = tf.range(4)  # the same for every sample
        rows = tf.gather(tf.ones((8, 2)), tokens + 1)  # tokens through ops
        seen.update(tokens=lookups.depends_on_batch(tokens + 1, [tokens]),
                    segments=lookups.depends_on_batch(segments, [tokens]),
                    positions=lookups.depends_on_batch(positions, [tokens]))
        return rows

    step(tf.constant([[1, 2, 3, 4]]))
    assert seen == {"tokens": True, "segments": True, "positions": False}


def test_an_eager_tensor_has_no_graph_to_read():
    with pytest.raises(ValueError, match="run_eagerly=False"):
        lookups.depends_on_batch(tf.constant([1]), [])
