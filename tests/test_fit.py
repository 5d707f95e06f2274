"""fit_distributed as a drop-in for model.fit: inputs, callbacks, results."""

import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpar.strategies import DataParallel
import tfpar

from conftest import assert_same_weights, build_mlp, compile_model, make_data, weights_of


def fit_both(fit_kwargs, x=None, y=None, *, optimizer="sgd", strategy=None):
    """Trains the same model with model.fit and fit_distributed; returns both."""
    reference = compile_model(build_mlp(), optimizer)
    ref_history = reference.fit(x, y, **fit_kwargs)
    model = compile_model(build_mlp(), optimizer)
    history = tfpar.fit_distributed(model, x, y, strategy=strategy or DataParallel(4), **fit_kwargs)
    return (reference, ref_history), (model, history)


def assert_same_run(pair):
    (reference, ref_history), (model, history) = pair
    assert_same_weights(weights_of(model), weights_of(reference))
    assert sorted(history.history) == sorted(ref_history.history)
    for key, values in ref_history.history.items():
        np.testing.assert_allclose(history.history[key], values, rtol=1e-5, atol=1e-6, err_msg=key)


def test_numpy_with_validation_split_and_sample_weight(data):
    x, y = data
    weights = np.linspace(0.5, 1.5, len(x)).astype("float32")
    assert_same_run(fit_both(dict(sample_weight=weights, batch_size=32, epochs=2, shuffle=False,
                                  validation_split=0.25, verbose=0), x, y))


def test_class_weight_and_validation_data(data):
    x, y = data
    x_val, y_val = make_data(64, seed=7)
    assert_same_run(fit_both(dict(class_weight={0: 1.0, 1: 2.0, 2: 0.5}, batch_size=64,
                                  validation_data=(x_val, y_val), shuffle=False, verbose=0), x, y))


def test_tf_data_dataset(data):
    x, y = data
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    assert_same_run(fit_both(dict(epochs=2, verbose=0), dataset, optimizer="adam"))


class ArraySequence(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return len(self.x) // self.batch_size

    def __getitem__(self, index):
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[rows], self.y[rows]


def test_py_dataset(data):
    x, y = data
    assert_same_run(fit_both(dict(epochs=1, verbose=0, shuffle=False), ArraySequence(x, y, 32)))


def test_initial_epoch_steps_per_epoch_and_verbose(data, capsys):
    x, y = data
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat()
    pair = fit_both(dict(epochs=3, initial_epoch=1, steps_per_epoch=4, verbose=2), dataset)
    assert_same_run(pair)
    assert pair[1][1].epoch == [1, 2]
    assert "Epoch 3/3" in capsys.readouterr().out
    assert int(pair[1][0].optimizer.iterations) == 8


def test_callbacks_see_training_and_then_the_callers_model(data, tmp_path):
    x, y = data
    seen = []

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, sorted(logs)))

    recorder = Recorder()
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), save_best_only=True)
    board = keras.callbacks.TensorBoard(str(tmp_path / "logs"))
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)
    model = compile_model(build_mlp())
    history = tfpar.fit_distributed(model, x, y, batch_size=32, epochs=5, verbose=0,
                                    validation_split=0.25, strategy=DataParallel(2),
                                    callbacks=[recorder, checkpoint, board, stop])
    # EarlyStopping with an impossible min_delta stops after its patience.
    assert history.epoch == [0, 1]
    assert seen[0] == (0, ["accuracy", "loss", "val_accuracy", "val_loss"])
    assert (tmp_path / "best.keras").exists()
    assert any(name.startswith("events") for _, _, files in os.walk(tmp_path / "logs") for name in files)
    assert recorder.model is model and stop.model is model
    restored = keras.models.load_model(tmp_path / "best.keras")
    assert [w.shape for w in restored.get_weights()] == [w.shape for w in model.get_weights()]


def test_early_stopping_restore_best_weights_reaches_the_callers_model(data):
    x, y = data
    best = []

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            best.append((logs["val_loss"], weights_of(self.model)))

    stop = keras.callbacks.EarlyStopping(patience=1, restore_best_weights=True)
    model = compile_model(build_mlp())
    model.optimizer.learning_rate = 5.0  # diverges, so an early epoch is best
    tfpar.fit_distributed(model, x, y, batch_size=32, epochs=6, verbose=0, validation_split=0.25,
                          strategy=DataParallel(4), callbacks=[Snapshot(), stop])
    assert_same_weights(weights_of(model), min(best, key=lambda b: b[0])[1])


def test_trained_model_evaluates_predicts_and_saves(data, tmp_path):
    x, y = data
    (reference, _), (model, _) = fit_both(dict(batch_size=32, epochs=2, shuffle=False, verbose=0), x, y)
    np.testing.assert_allclose(model.evaluate(x, y, verbose=0), reference.evaluate(x, y, verbose=0), rtol=1e-5)
    np.testing.assert_allclose(model.predict(x, verbose=0), reference.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert_same_weights(weights_of(loaded), weights_of(model), rtol=0, atol=0)
    # The caller's model keeps training from where fit_distributed left it.
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    assert int(model.optimizer.iterations) == 24


def test_metric_objects_and_custom_loss_carry_over(data):
    x, y = data

    def loss(y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True) * 2.0

    metric = keras.metrics.SparseCategoricalAccuracy(name="acc")
    model = build_mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss, metrics=[metric])
    reference = build_mlp()
    reference.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss,
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")])
    expected = reference.fit(x, y, batch_size=32, shuffle=False, verbose=0).history
    history = tfpar.fit_distributed(model, x, y, batch_size=32, shuffle=False, verbose=0,
                                    strategy=DataParallel(4))
    np.testing.assert_allclose(history.history["acc"], expected["acc"])
    np.testing.assert_allclose(history.history["loss"], expected["loss"], rtol=1e-5)
    assert_same_weights(weights_of(model), weights_of(reference))


def test_optimizer_state_of_a_trained_model_is_carried_in(data):
    x, y = data
    reference = compile_model(build_mlp(), "adam")
    reference.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    model = compile_model(build_mlp(), "adam")
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    tfpar.fit_distributed(model, x, y, batch_size=32, epochs=1, shuffle=False, verbose=0,
                          strategy=DataParallel(4))
    assert_same_weights(weights_of(model), weights_of(reference))
    assert int(model.optimizer.iterations) == 16


def test_model_built_in_the_strategy_scope_is_used_as_is(data):
    x, y = data
    strategy = DataParallel(2)
    with strategy.scope():
        model = compile_model(build_mlp())
    kernel = model.weights[0]
    history = tfpar.fit_distributed(model, x, y, batch_size=32, verbose=0, strategy=strategy)
    assert model.weights[0] is kernel and history.model is model
    assert int(model.optimizer.iterations.numpy()) == 8
    # The name of its kind also resolves to the model's own strategy.
    tfpar.fit_distributed(model, x, y, batch_size=32, verbose=0, strategy="mirrored")
    with pytest.raises(ValueError, match="built inside the scope of"):
        tfpar.fit_distributed(model, x, y, batch_size=32, verbose=0, strategy=DataParallel(2))


def test_unbuilt_model_is_built_and_receives_the_weights(data):
    x, y = data
    model = keras.Sequential([keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    compile_model(model)
    tfpar.fit_distributed(model, x, y, batch_size=32, verbose=0, strategy=DataParallel(2))
    assert model.built and model.count_params() == 12 * 8 + 8 + 8 * 3 + 3
    assert int(model.optimizer.iterations.numpy()) == 8


def test_uneven_final_batch_is_padded_and_exact(data):
    # 256 samples in batches of 48: the last (16) is padded, not split 4/4/4/4
    # unevenly weighted; the result is one device's.
    x, y = data
    reference = compile_model(build_mlp())
    reference.fit(x, y, batch_size=48, verbose=0, shuffle=False)
    model = compile_model(build_mlp())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exact: nothing to warn about
        tfpar.fit_distributed(model, x, y, batch_size=48, verbose=0, shuffle=False,
                              strategy=DataParallel(["cpu:0", "cpu:1", "cpu:2"]))
    for a, b in zip(weights_of(model), weights_of(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
