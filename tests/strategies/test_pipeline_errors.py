"""Bad input to ModelSplit / GPipe: clear errors with the values seen."""

import keras
import numpy as np
import pytest

from tfpar.strategies import GPipe, ModelSplit
import tfpar

from conftest import build_mlp, compile_model, make_data, weights_of

x, y = make_data(64)


def model():
    return compile_model(build_mlp())


@pytest.mark.parametrize("make, message", [
    (lambda: GPipe(2, microbatches=0), r"microbatches must be a whole number >= 1. Received: microbatches=0"),
    (lambda: GPipe(2, schedule="interleaved"), r"schedule must be one of \['gpipe', '1f1b', 'zb1'\]. Received: schedule='interleaved'"),
    (lambda: ModelSplit(["/cpu:0", "/cpu:7"]), r"'/cpu:7' does not exist.*Available"),
    (lambda: ModelSplit(2, balance="memory"), r"balance must be one of \['params', 'flops', 'time'\].*'memory'"),
    # A string would read as True.
    (lambda: GPipe(2, rematerialize="no"), r"rematerialize must be True or False. Received: rematerialize='no'"),
    (lambda: GPipe(2, record_timeline="yes"), r"record_timeline must be True or False"),
])
def test_bad_strategy_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("strategy, fit, message", [
    (ModelSplit(4), {}, r"More stages than layers.*stages: 4, layers: 3"),
    (ModelSplit(2, balance=[1, 1]), {}, r"different length \(layers: 3, sum of balance: 2\)"),
    (GPipe(2, microbatches=3), dict(batch_size=32), r"divisible by the number of micro-batches \(3\).*batch_size=32.*30 or 33"),
])
def test_bad_layout_is_a_clear_error_and_changes_nothing(strategy, fit, message):
    m = model()
    before = weights_of(m)
    with pytest.raises(ValueError, match=message):
        tfpar.fit_distributed(m, x, y, strategy=strategy, verbose=0, **fit)
    for a, b in zip(weights_of(m), before):
        np.testing.assert_array_equal(a, b)
    assert not m.optimizer.built


def test_subclassed_model_cannot_be_split():
    class Net(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(3)

        def call(self, inputs):
            return self.dense(inputs)

    net = Net()
    net(x[:1])
    compile_model(net)
    with pytest.raises(ValueError, match="needs a Sequential or functional model.*subclassed"):
        tfpar.fit_distributed(net, x, y, strategy=ModelSplit(2), verbose=0)


def test_sequential_without_input_is_built_from_the_data_as_fit_does():
    def unbuilt():
        keras.utils.set_random_seed(0)
        return compile_model(keras.Sequential([keras.layers.Dense(4), keras.layers.Dense(3)]))

    reference = unbuilt()
    reference.fit(x, y, batch_size=32, shuffle=False, verbose=0)
    m = unbuilt()
    tfpar.fit_distributed(m, x, y, batch_size=32, shuffle=False, strategy=ModelSplit(2), verbose=0)
    for a, b in zip(weights_of(m), weights_of(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_model_that_cannot_be_built_from_the_data_is_refused():
    m = compile_model(keras.Sequential([keras.layers.Dense(4), keras.layers.Dense(3)]))

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return x[:32], y[:32]

    with pytest.raises(ValueError, match=r"must be built before it is split.*keras.Input"):
        tfpar.fit_distributed(m, Batches(), strategy=ModelSplit(2), verbose=0)


def test_final_partial_batch_stays_exact():
    # 60 samples in batches of 16: the last batch (12) splits 3/3/3/3 over
    # M=4 and is still weighted exactly.
    xs, ys = x[:60], y[:60]
    reference = model()
    reference.fit(xs, ys, batch_size=16, shuffle=False, verbose=0)
    m = model()
    with pytest.warns(UserWarning, match="weighted by size, so training stays exact"):
        tfpar.fit_distributed(m, xs, ys, batch_size=16, shuffle=False, verbose=0,
                              strategy=GPipe(2, microbatches=4))
    for a, b in zip(weights_of(m), weights_of(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_non_mean_loss_reduction_is_refused_when_micro_batching():
    m = build_mlp()
    m.compile(optimizer="sgd",
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum"))
    with pytest.raises(ValueError, match=r"reduction='sum'.*microbatches=1"):
        tfpar.fit_distributed(m, x, y, batch_size=32, strategy=GPipe(2, microbatches=2), verbose=0)
    # One micro-batch weighs 1: any reduction is exact.
    tfpar.fit_distributed(m, x, y, batch_size=32, strategy=ModelSplit(2), verbose=0)


@pytest.mark.parametrize("strategy", [lambda: ModelSplit(2), lambda: GPipe(2, schedule="zb1")])
def test_xla_is_refused_before_training(strategy):
    net = compile_model(build_mlp(), jit_compile=True)
    before = weights_of(net)
    with pytest.raises(ValueError, match=r"cannot run a model compiled with jit_compile=True.*"
                                         r"jit_compile=False"):
        tfpar.fit_distributed(net, x, y, batch_size=16, epochs=1, verbose=0, strategy=strategy())
    for a, b in zip(weights_of(net), before):
        np.testing.assert_array_equal(a, b)
