"""DataParallel(microbatches=k): each replica's share as k sequential
micro-batches, gradients summed locally, one all-reduce per step."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpar.strategies import DataParallel
import tfpar

from conftest import ADAM_ATOL, assert_same_weights, build_mlp, compile_model, make_data, weights_of

FIT = dict(batch_size=64, epochs=2, shuffle=False, verbose=0)


def travel(weights, start) -> float:
    return max(float(np.max(np.abs(w - s))) for w, s in zip(weights, start))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("microbatches", [2, 4])
def test_trains_like_one_device_at_the_same_global_batch(optimizer, microbatches):
    # 250 samples in batches of 64: the last (58) gives each replica 29
    # rows, which k micro-batches cut unevenly (15 + 14; 8 + 7 + 7 + 7).
    x, y = make_data(250)
    reference = compile_model(build_mlp(), optimizer)
    start = weights_of(reference)
    expected = reference.fit(x, y, **FIT).history
    model = compile_model(build_mlp(), optimizer)
    history = tfpar.fit_distributed(model, x, y, strategy=DataParallel(2, microbatches=microbatches),
                                    **FIT).history
    atol = ADAM_ATOL if optimizer == "adam" else 1e-6
    assert_same_weights(weights_of(model), weights_of(reference), atol=atol)
    assert travel(weights_of(model), start) == pytest.approx(travel(weights_of(reference), start), rel=1e-2)
    assert travel(weights_of(reference), start) > 1e-2
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(history[key], expected[key], rtol=1e-4, err_msg=key)


def embedding_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,), dtype="int32")
    hidden = keras.layers.Embedding(20, 4)(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(hidden))
    model = keras.Model(inputs, outputs)
    return compile_model(model, "adam")


def test_sparse_gradients_are_combined_as_one_device_computes_them():
    # Adam squares each IndexedSlices entry: summing the micro-batches'
    # embedding gradients into one dense tensor would change the update.
    rng = np.random.default_rng(3)
    x = rng.integers(0, 20, size=(128, 6)).astype("int32")
    y = rng.integers(0, 3, size=128).astype("int32")
    reference = embedding_model()
    reference.fit(x, y, **FIT)
    model = embedding_model()
    tfpar.fit_distributed(model, x, y, strategy=DataParallel(2, microbatches=4), **FIT)
    assert_same_weights(weights_of(model), weights_of(reference), atol=ADAM_ATOL)


def test_one_all_reduce_per_step_whatever_the_micro_batches(monkeypatch):
    calls = []
    all_reduce = tf.distribute.ReplicaContext.all_reduce

    def counting(self, reduce_op, value, options=None):
        calls.append(len(tf.nest.flatten(value)))
        return all_reduce(self, reduce_op, value, options)

    monkeypatch.setattr(tf.distribute.ReplicaContext, "all_reduce", counting)
    x, y = make_data(128)
    counts = {}
    for k in (1, 4):
        calls.clear()
        model = compile_model(build_mlp())
        tfpar.fit_distributed(model, x, y, strategy=DataParallel(2, microbatches=k), **FIT)
        counts[k] = list(calls)
    # Each replica all-reduces its gradients once per traced step: the same
    # calls (one per replica, every weight in each) with and without.
    gradient_calls = [n for n in counts[1] if n == len(build_mlp().trainable_weights)]
    assert len(gradient_calls) == 2
    assert counts[4] == counts[1]


def test_a_micro_batch_count_that_does_not_divide_the_share_is_refused():
    x, y = make_data(128)
    model = compile_model(build_mlp())
    with pytest.raises(ValueError, match=r"batch_size=64 over 2 replicas is 32 per replica, which 3 "
                                         r"micro-batches do not divide. Use batch_size=60 or 66"):
        tfpar.fit_distributed(model, x, y, strategy=DataParallel(2, microbatches=3), **FIT)


@pytest.mark.parametrize("value", [0, 1.5, "2"])
def test_a_bad_micro_batch_count_is_a_clear_error(value):
    with pytest.raises(ValueError, match=rf"microbatches must be a whole number >= 1.*{value!r}"):
        DataParallel(2, microbatches=value)


class OwnStep(keras.Model):
    def train_step(self, data):
        return super().train_step(data)


def test_a_model_with_its_own_train_step_is_refused_before_training():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,))
    model = compile_model(OwnStep(inputs, keras.layers.Dense(3)(inputs)))
    before = weights_of(model)
    x, y = make_data(128)
    with pytest.raises(ValueError, match=r"overrides \['train_step'\].*Use microbatches=1"):
        tfpar.fit_distributed(model, x, y, strategy=DataParallel(2, microbatches=2), **FIT)
    for a, b in zip(weights_of(model), before):
        np.testing.assert_array_equal(a, b)


def test_plain_keras_in_the_scope_warns_that_micro_batches_are_ignored():
    strategy = DataParallel(2, microbatches=2)
    with strategy.scope():
        model = compile_model(build_mlp())
    x, y = make_data(64)
    with pytest.warns(UserWarning, match=r"only in tfpar.fit_distributed"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)


def test_the_repr_shows_the_micro_batches():
    assert "microbatches=4" in repr(DataParallel(2, microbatches=4))
