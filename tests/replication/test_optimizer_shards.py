"""DataParallel(shard="optimizer") (ZeRO-1): each replica holds the
optimizer state of its share of the weights, and training is one device's.

Exactness: the same model, weights and data order as single-device
`model.fit`; weights and the caller's optimizer state after training agree
to float32 round-off (1e-6 under SGD; ADAM_ATOL under Adam, whose division
by sqrt(v) amplifies round-off in near-zero gradients), and the weights
moved as far as on one device.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfpar
from tfpar.replication import optimizer_shards

from conftest import ADAM_ATOL, assert_same_weights, build_mlp, make_data, weights_of

FIT = dict(batch_size=32, epochs=2, shuffle=False, verbose=0)

OPTIMIZERS = {
    "sgd": lambda: keras.optimizers.SGD(0.1, momentum=0.5),
    "adam": lambda: keras.optimizers.Adam(0.01),
    "adamw-clipped": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.05, global_clipnorm=0.5),
    "adam-accumulated": lambda: keras.optimizers.Adam(0.01, gradient_accumulation_steps=2),
    "rmsprop-clipnorm": lambda: keras.optimizers.RMSprop(0.01, clipnorm=0.1),
}


def compiled(optimizer: str) -> keras.Model:
    model = build_mlp()
    model.compile(optimizer=OPTIMIZERS[optimizer](),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def one_device(optimizer: str, x, y, **fit):
    model = compiled(optimizer)
    history = model.fit(x, y, **{**FIT, **fit})
    return model, history


def state(model):
    return [np.array(v) for v in model.optimizer.variables]


@pytest.mark.parametrize("replicas, microbatches, samples", [(2, 1, 256), (4, 1, 256), (2, 2, 250)],
                         ids=["R2", "R4", "R2-M2-uneven"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_trains_and_ends_with_the_optimizer_state_of_one_device(optimizer, replicas, microbatches, samples):
    x, y = make_data(samples)
    expected, expected_history = one_device(optimizer, x, y)
    model = compiled(optimizer)
    before = weights_of(model)
    history = tfpar.fit_distributed(
        model, x, y, strategy=tfpar.strategies.DataParallel(replicas, microbatches=microbatches,
                                                            shard="optimizer"), **FIT)
    atol = 1e-6 if optimizer == "sgd" else ADAM_ATOL
    assert_same_weights(weights_of(model), weights_of(expected), atol=atol)
    # The caller's optimizer holds the whole state again, as one device's.
    assert_same_weights(state(model), state(expected), atol=atol)
    np.testing.assert_allclose(history.history["loss"], expected_history.history["loss"], rtol=1e-5)
    moved = max(np.abs(a - b).max() for a, b in zip(weights_of(expected), before))
    assert moved > 1e-2
    np.testing.assert_allclose(max(np.abs(a - b).max() for a, b in zip(weights_of(model), before)),
                               moved, rtol=1e-3)


def test_each_replica_holds_only_its_share_and_the_twin_no_slots():
    strategy = tfpar.strategies.DataParallel(4, shard="optimizer")
    model = compiled("adam")
    x, y = make_data(64)
    seen = {}

    class Look(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            twin = self.model.optimizer
            seen["twin"] = [v.path for v in twin.variables]
            seen["shards"] = twin.shards

    tfpar.fit_distributed(model, x, y, strategy=strategy, callbacks=[Look()], **FIT)
    shards = seen["shards"]
    devices = list(strategy.extended.worker_devices)
    weights = model.trainable_variables
    assert sorted(k for mine in shards.owned for k in mine) == list(range(len(weights)))
    for r, (shard, mine) in enumerate(zip(shards.optimizers, shards.owned)):
        slots = [v for v in shard.variables if "shard_" in v.path]
        assert len(slots) == 2 * len(mine)  # Adam: two moments of each owned weight only
        assert all(tf.DeviceSpec.from_string(v.value.device).device_index
                   == tf.DeviceSpec.from_string(devices[r]).device_index for v in slots)
    assert not any("momentum" in p or "velocity" in p for p in seen["twin"])
    # Balanced by bytes: no replica holds more than the largest weight
    # beyond an equal share.
    sizes = [w.shape.num_elements() * 4 for w in weights]
    assert max(shards.bytes_per_replica) <= sum(sizes) / 4 + max(sizes)


def test_a_second_fit_continues_from_the_gathered_state():
    x, y = make_data(128)
    expected, _ = one_device("adam", x, y, epochs=2)
    model = compiled("adam")
    strategy = tfpar.strategies.DataParallel(2, shard="optimizer")
    tfpar.fit_distributed(model, x, y, strategy=strategy, **{**FIT, "epochs": 1})
    tfpar.fit_distributed(model, x, y, strategy=strategy, **{**FIT, "epochs": 1})
    assert_same_weights(weights_of(model), weights_of(expected), atol=ADAM_ATOL)
    assert_same_weights(state(model), state(expected), atol=ADAM_ATOL)


def test_the_balance_puts_the_largest_first_on_the_least_loaded():
    assert optimizer_shards.balance([400, 100, 300, 200], 2) == [0, 0, 1, 1]  # 400+100, 300+200
    assert optimizer_shards.balance([5], 3) == [0]
    assert optimizer_shards.balance([1, 1, 1, 1], 4) == [0, 1, 2, 3]


@pytest.mark.parametrize("kwargs, message", [
    (dict(shard="weights"), r"shard must be one of \[None, 'optimizer'\].*Received: shard='weights'"),
    (dict(shard="optimizer", compression="powersgd"), r"shard='optimizer' with compression=PowerSGD"),
])
def test_what_cannot_work_is_refused_when_the_strategy_is_made(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tfpar.strategies.DataParallel(2, **kwargs)


def test_checkpointing_and_a_model_built_in_the_scope_are_refused_before_training(tmp_path):
    x, y = make_data(64)
    strategy = tfpar.strategies.DataParallel(2, shard="optimizer")
    model = compiled("adam")
    before = weights_of(model)
    with pytest.raises(ValueError, match=r"checkpoint_dir with shard='optimizer'"):
        tfpar.fit_distributed(model, x, y, strategy=strategy, checkpoint_dir=str(tmp_path),
                              checkpoint_every=1, **FIT)
    assert_same_weights(weights_of(model), before, rtol=0, atol=0)
    with strategy.scope():
        inside = compiled("adam")
    with pytest.raises(ValueError, match=r"built in the strategy's scope and trains with its own"):
        tfpar.fit_distributed(inside, x, y, strategy=strategy, **FIT)
    assert int(inside.optimizer.iterations.numpy()) == 0
