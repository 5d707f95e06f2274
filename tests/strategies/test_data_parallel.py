import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpar.strategies import DataParallel
import tfpar

from conftest import DEVICES, assert_same_weights, build_mlp, compile_model, weights_of


def _all_reduce(strategy, value, dtype=tf.float32):
    """Each replica contributes `value` as a variable's gradient; returns
    what each replica receives from the strategy's gradient sum (Keras'
    own all-reduce without compression)."""
    variable = keras.Variable(tf.zeros((), dtype), trainable=dtype.is_floating)
    hook = strategy.communication_hook

    @tf.function
    def step():
        def replica_fn():
            grad = tf.constant(value, dtype)
            if hook is None:
                return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grad)
            return hook([(grad, variable)])[0]

        return strategy.run(replica_fn)

    return strategy.experimental_local_results(step())


def test_is_a_mirrored_strategy_over_the_requested_devices():
    strategy = DataParallel(2)
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 2
    assert [tf.DeviceSpec.from_string(d).device_index for d in strategy.extended.worker_devices] == [0, 1]
    assert DataParallel().num_replicas_in_sync == len(DEVICES)
    assert DataParallel(["cpu:2", "cpu:3"]).num_replicas_in_sync == 2


@pytest.mark.parametrize("compression, expected", [(None, 4 + 2**-10), ("fp16", 4.0), ("bf16", 4.0)])
def test_compression_reduces_in_the_narrow_dtype(compression, expected):
    # 1 + 2**-12 is exact in float32 but rounds to 1.0 in fp16 (10-bit
    # mantissa) and bf16 (7-bit): only a real cast loses the 2**-12 terms.
    results = _all_reduce(DataParallel(4, compression=compression), 1.0 + 2.0**-12)
    assert [r.dtype for r in results] == [tf.float32] * 4
    assert [float(r) for r in results] == [expected] * 4


def test_compression_leaves_integers_alone():
    results = _all_reduce(DataParallel(4, compression="fp16"), 70001, tf.int32)
    assert [int(r) for r in results] == [280004] * 4


def test_compression_reaches_keras_gradients(data):
    x, y = data

    def train(compression):
        model = compile_model(build_mlp())
        tfpar.fit_distributed(model, x, y, batch_size=32, epochs=1, shuffle=False, verbose=0,
                              strategy=DataParallel(4, compression=compression))
        return weights_of(model)

    exact, compressed = train(None), train("fp16")
    differences = [np.max(np.abs(a - b)) for a, b in zip(exact, compressed)]
    # fp16 keeps ~3 significant digits: the run differs, but only by rounding.
    assert max(differences) > 0
    assert max(differences) < 1e-2


@pytest.mark.parametrize("bytes_per_pack, ops_per_replica", [(0, 1), (1, 3)])
def test_bytes_per_pack_reaches_the_collectives(bytes_per_pack, ops_per_replica):
    strategy = DataParallel(4, bytes_per_pack=bytes_per_pack)

    @tf.function
    def step():
        def replica_fn():
            values = [tf.ones([10]), tf.ones([20]), tf.ones([3])]
            return tf.distribute.get_replica_context().all_reduce("sum", values)

        return strategy.run(replica_fn)

    graph = step.get_concrete_function().graph
    reduces = [op for op in graph.get_operations() if op.type.startswith("CollectiveReduce")]
    assert len(reduces) == 4 * ops_per_replica


@pytest.mark.parametrize("all_reduce", ["auto", "ring", "reduce_to_one"])
def test_every_cpu_all_reduce_trains_like_one_device(all_reduce, data):
    x, y = data
    reference = compile_model(build_mlp())
    reference.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    model = compile_model(build_mlp())
    tfpar.fit_distributed(model, x, y, batch_size=32, epochs=1, shuffle=False, verbose=0,
                          strategy=DataParallel(4, all_reduce=all_reduce))
    assert_same_weights(weights_of(model), weights_of(reference))


def test_plain_keras_fit_works_in_its_scope(data):
    x, y = data
    strategy = DataParallel(2)
    with strategy.scope():
        model = compile_model(build_mlp())
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(all_reduce="allgather"), r"all_reduce must be one of .*'ring'.*Received: all_reduce='allgather'"),
        (dict(compression="int8"), r"compression must be one of .*'fp16'.*Received: compression='int8'"),
        (dict(all_reduce="nccl"), r"'nccl' needs every device to be a GPU"),
        (dict(bytes_per_pack=-1), r"bytes_per_pack must be a whole number >= 0.*-1"),
        (dict(devices=["/gpu:0"]), r"does not exist.*Available"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataParallel(**kwargs)


def test_repr_shows_the_choices():
    text = repr(DataParallel(2, compression="bf16", bytes_per_pack=1024))
    assert "compression='bf16'" in text and "bytes_per_pack=1024" in text and "CPU:1" in text


@pytest.mark.parametrize("microbatches", [1, 2])
def test_several_steps_per_execution_train_like_one_device(microbatches, data):
    # Keras' own while-loop step fails under MirroredStrategy ("You must
    # feed a value for placeholder tensor 'while/body/...'"); tfpar unrolls.
    x, y = data
    fit = dict(batch_size=32, epochs=2, shuffle=False, verbose=0, validation_split=0.25)
    reference = compile_model(build_mlp(), steps_per_execution=3)
    expected = reference.fit(x, y, **fit).history  # 6 steps an epoch: calls of 3
    model = compile_model(build_mlp(), steps_per_execution=4)  # calls of 4 and 2
    history = tfpar.fit_distributed(model, x, y, strategy=DataParallel(2, microbatches=microbatches),
                                    **fit).history
    assert_same_weights(weights_of(model), weights_of(reference))
    for key, values in expected.items():
        np.testing.assert_allclose(history[key], values, rtol=1e-5, err_msg=key)
