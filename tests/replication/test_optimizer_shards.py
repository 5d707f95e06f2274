"""DataParallel(shard="optimizer" | "gradients") (ZeRO-1, ZeRO-2): each
replica holds the optimizer state (and at "gradients" the summed gradient)
of its share of the weights, and training is one device's.

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
from tfpar.comm import reduce_scatter
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


CASES = [pytest.param(optimizer, replicas, microbatches, samples, "optimizer",
                      id=f"optimizer-{optimizer}-{label}")
         for optimizer in OPTIMIZERS
         for replicas, microbatches, samples, label in [(2, 1, 256, "R2"), (4, 1, 256, "R4"),
                                                        (2, 2, 250, "R2-M2-uneven")]]
# ZeRO-2: the reduce-scatter at R=2 and R=4, and the micro-batched sharded
# running sum, with the clipping kinds (a global norm over shards).
CASES += [pytest.param(optimizer, replicas, microbatches, samples, "gradients",
                       id=f"gradients-{optimizer}-{label}")
          for optimizer, replicas, microbatches, samples, label in [
              ("sgd", 2, 2, 250, "R2-M2-uneven"), ("adam", 4, 1, 256, "R4"),
              ("adamw-clipped", 4, 2, 256, "R4-M2"), ("rmsprop-clipnorm", 2, 1, 250, "R2-uneven")]]


@pytest.mark.parametrize("optimizer, replicas, microbatches, samples, level", CASES)
def test_trains_and_ends_with_the_optimizer_state_of_one_device(optimizer, replicas, microbatches, samples,
                                                                level):
    x, y = make_data(samples)
    expected, expected_history = one_device(optimizer, x, y)
    model = compiled(optimizer)
    before = weights_of(model)
    history = tfpar.fit_distributed(
        model, x, y, strategy=tfpar.strategies.DataParallel(replicas, microbatches=microbatches,
                                                            shard=level), **FIT)
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
    (dict(shard="weights"), r"shard must be one of \[None, 'optimizer', 'gradients'\].*Received: shard='weights'"),
    (dict(shard="optimizer", compression="powersgd"), r"shard='optimizer' with compression=PowerSGD"),
    (dict(shard="gradients", all_reduce="reduce_to_one"), r"sums them on one device. Use all_reduce='auto'"),
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


def test_the_reduce_scatter_gives_each_owner_the_sum_of_its_gradients_only():
    strategy = tfpar.strategies.DataParallel(4)
    with strategy.scope():
        variables = [keras.Variable(np.zeros(shape, "float32"), name=f"w{i}")
                     for i, shape in enumerate([(3, 5), (7,), (2, 2), (6,), (1,)])]
    shards = optimizer_shards.OptimizerShards(keras.optimizers.SGD(), variables, strategy, level="gradients")

    @tf.function
    def step():
        def replica():
            r = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group + 1, tf.float32)
            grads = [tf.ones(v.shape) * r * (k + 1) for k, v in enumerate(variables)]
            return [tf.zeros([0]) if g is None else g for g in shards.summed_shares(grads, variables)]
        return strategy.run(replica)

    results = step()
    for r in range(4):
        for k, value in enumerate(results):
            local = strategy.experimental_local_results(value)[r].numpy()
            if shards.owners[k] == r:  # (1 + 2 + 3 + 4) * (k + 1) everywhere
                np.testing.assert_array_equal(local, np.full(variables[k].shape, 10.0 * (k + 1)))
            else:
                assert local.size == 0
    assert sorted(set(shards.owners)) == [0, 1, 2, 3]
    # One exchange of the whole buffer: 4 rows of the largest share.
    assert shards.scattered_bytes == 4 * max(shards.bytes_per_replica)


def test_reduce_scatter_adds_the_rows_every_replica_sent_it():
    strategy = tfpar.strategies.DataParallel(2)

    @tf.function
    def step():
        def replica():
            r = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.float16)
            rows = tf.stack([tf.fill([3], r + 1), tf.fill([3], 10 * (r + 1))])
            return reduce_scatter.reduce_scatter(rows, sum_dtype=tf.float32)
        return strategy.run(replica)

    first, second = (t.numpy().tolist() for t in strategy.experimental_local_results(step()))
    assert first == [3.0, 3.0, 3.0] and second == [30.0, 30.0, 30.0]


def test_mixed_precision_and_fp16_compression_train_like_one_device():
    x, y = make_data(128)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        expected, _ = one_device("adam", x, y)
        model = compiled("adam")
        tfpar.fit_distributed(model, x, y, strategy=tfpar.strategies.DataParallel(2, shard="gradients"), **FIT)
        fp16 = compiled("adam")
        tfpar.fit_distributed(fp16, x, y, strategy=tfpar.strategies.DataParallel(
            2, shard="gradients", compression="fp16"), **FIT)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert_same_weights(weights_of(model), weights_of(expected), atol=1e-4)  # float16 compute
    # fp16 on the wire rounds each gradient to 11 bits, as an fp16 all-reduce does.
    assert_same_weights(weights_of(fp16), weights_of(expected), atol=1e-3)


@pytest.mark.parametrize("microbatches", [1, 2])
def test_embedding_gradients_stay_sparse_and_train_like_one_device(microbatches):
    x = np.random.default_rng(3).integers(0, 50, size=(128, 6))
    y = (x.sum(axis=1) % 3).astype("int32")

    def build():
        keras.utils.set_random_seed(4)
        model = keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(50, 8),
                                  keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(3)])
        model.compile(optimizer=keras.optimizers.Adam(0.01, global_clipnorm=0.5),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    expected = build()
    before = weights_of(expected)
    expected.fit(x, y, **FIT)
    model = build()
    tfpar.fit_distributed(model, x, y, strategy=tfpar.strategies.DataParallel(
        2, microbatches=microbatches, shard="gradients"), **FIT)
    assert_same_weights(weights_of(model), weights_of(expected), atol=ADAM_ATOL)
    assert max(np.abs(a - b).max() for a, b in zip(weights_of(expected), before)) > 1e-2


@pytest.mark.parametrize("optimizer, microbatches, message", [
    ("adam-accumulated", 1, r"shard='gradients' with gradient_accumulation_steps=2: Keras accumulates"),
    ("mixed", 2, r"shard='gradients' with microbatches=2 and a LossScaleOptimizer"),
])
def test_what_zero2_cannot_shard_is_refused_before_training(optimizer, microbatches, message):
    x, y = make_data(64)
    if optimizer == "mixed":
        model = compiled("adam")
        model.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam()),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    else:
        model = compiled(optimizer)
    before = weights_of(model)
    with pytest.raises(ValueError, match=message):
        tfpar.fit_distributed(model, x, y, strategy=tfpar.strategies.DataParallel(
            2, microbatches=microbatches, shard="gradients"), **FIT)
    assert_same_weights(weights_of(model), before, rtol=0, atol=0)
    assert not model.optimizer.built or int(model.optimizer.iterations.numpy()) == 0
