"""predict_distributed and evaluate_distributed: model.predict and
model.evaluate under every strategy, equal to one device to float32
round-off (1e-5 absolute on softmax outputs and losses of order 1: a
micro-batch's matmul may sum in another order than the whole batch's), the
caller's model untouched; pipelines cut each batch into micro-batches."""

import keras
import numpy as np
import pytest

from tfpar.pipeline import stage_calls
from tfpar.strategies import DataParallel, GPipe, ModelSplit
import tfpar

from conftest import weights_of

STRATEGIES = {
    "DataParallel(2)": lambda: DataParallel(2),
    "ModelSplit(2)": lambda: ModelSplit(2),
    "GPipe(2, M=4)": lambda: GPipe(2, microbatches=4),
    "GPipe(2x2, M=2)": lambda: GPipe(4, microbatches=2, data_parallel=2),
}
ATOL = 1e-5


def trained_model(noise=True):
    """A keras.io-style functional model with a skip, BatchNormalization and
    dropout (with `noise`) and a softmax head, trained a little so its
    moving statistics matter."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((12,))
    first = keras.layers.Dense(16, activation="relu")(inputs)
    hidden = keras.layers.Dense(16, activation="relu")(first)
    if noise:
        hidden = keras.layers.BatchNormalization()(hidden)
    hidden = keras.layers.Add()([hidden, first])
    if noise:
        hidden = keras.layers.Dropout(0.3)(hidden)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = data()
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    return model


def data(samples=101):  # 101: no batch size below divides it
    rng = np.random.default_rng(2)
    return rng.normal(size=(samples, 12)).astype("float32"), rng.integers(0, 3, samples)


@pytest.mark.parametrize("strategy", STRATEGIES.values(), ids=STRATEGIES.keys())
def test_predict_and_evaluate_equal_one_device_and_leave_the_model_alone(strategy):
    model = trained_model()
    x, y = data()
    before = weights_of(model)
    iterations = int(model.optimizer.iterations)
    expected = model.predict(x, batch_size=32, verbose=0)
    expected_metrics = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    predicted = tfpar.predict_distributed(model, x, strategy=strategy(), batch_size=32, verbose=0)
    metrics = tfpar.evaluate_distributed(model, x, y, strategy=strategy(), batch_size=32, verbose=0,
                                         return_dict=True)
    np.testing.assert_allclose(predicted, expected, atol=ATOL)
    assert sorted(metrics) == sorted(expected_metrics)
    for name, value in expected_metrics.items():
        assert metrics[name] == pytest.approx(value, abs=ATOL), name
    for a, b in zip(weights_of(model), before):
        np.testing.assert_array_equal(a, b)
    assert int(model.optimizer.iterations) == iterations


def test_a_pipeline_predicts_each_batch_as_micro_batches(monkeypatch):
    sizes = []
    run = stage_calls.run

    def recording(stage, inputs, training):
        sizes.append((stage.index, int(inputs[0].shape[0])))
        return run(stage, inputs, training)

    monkeypatch.setattr(stage_calls, "run", recording)
    x, _ = data(64)
    tfpar.predict_distributed(trained_model(), x, strategy=GPipe(2, microbatches=4),
                              batch_size=64, verbose=0)
    # Traced once for the batch of 64: four micro-batches of 16 per stage,
    # stage 1 starting on micro-batch 0 before stage 0 runs micro-batch 3.
    assert sorted(set(sizes)) == [(0, 16), (1, 16)]
    assert sizes.index((1, 16)) < len(sizes) - 1 - sizes[::-1].index((0, 16))


def test_pipelined_validation_reports_what_one_device_reports():
    x, y = data(96)
    val = data(40)
    # No dropout or BatchNormalization: their training differs per
    # micro-batch, and validation must be compared on the same weights.
    reference = trained_model(noise=False)
    expected = reference.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0,
                             validation_data=val, validation_batch_size=16).history
    model = trained_model(noise=False)
    history = tfpar.fit_distributed(model, x, y, batch_size=32, epochs=2, shuffle=False, verbose=0,
                                    validation_data=val, validation_batch_size=16,
                                    strategy=GPipe(2, microbatches=4)).history
    for name in ("val_loss", "val_accuracy"):
        np.testing.assert_allclose(history[name], expected[name], atol=ATOL)
        assert len(history[name]) == 2


def test_predict_needs_no_compile_and_evaluate_does():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(3)])
    x, y = data()
    predicted = tfpar.predict_distributed(model, x, strategy=GPipe(1, microbatches=4), verbose=0)
    np.testing.assert_allclose(predicted, model.predict(x, verbose=0), atol=ATOL)
    with pytest.raises(ValueError, match="must be compiled before it is evaluated"):
        tfpar.evaluate_distributed(model, x, y, strategy="mirrored")


def test_unknown_arguments_are_refused():
    model = trained_model()
    x, y = data()
    with pytest.raises(TypeError, match=r"predict_distributed got unexpected argument\(s\) \['epochs'\]"):
        tfpar.predict_distributed(model, x, strategy="mirrored", epochs=2)
    with pytest.raises(TypeError, match=r"evaluate_distributed got unexpected argument\(s\) \['shuffle'\]"):
        tfpar.evaluate_distributed(model, x, y, strategy="mirrored", shuffle=True)
