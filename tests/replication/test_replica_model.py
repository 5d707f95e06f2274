"""Data parallel takes over Keras' step through one subclass of the model's
class, made per call and taken back after it (replica_model).

Exactness of the steps it runs is in tests/strategies/test_contract.py,
test_microbatches.py and the conformance catalogue.
"""

import keras
import numpy as np
import pytest

import tfpar
from tfpar.replication.replica_model import replicated

from conftest import build_mlp, compile_model, make_data


class Probe(keras.callbacks.Callback):
    """What the model is while fit runs."""

    def on_train_batch_end(self, batch, logs=None):
        self.seen = (type(self.model), dict(vars(self.model)))


def test_the_model_is_its_own_class_again_after_fit_and_no_instance_attribute_is_left():
    model = compile_model(build_mlp())
    own, before = type(model), set(vars(model))
    x, y = make_data(64)
    probe = Probe()
    tfpar.fit_distributed(model, x, y, batch_size=32, epochs=1, verbose=0, shuffle=False,
                          strategy=tfpar.strategies.DataParallel(2, microbatches=2), callbacks=[probe])
    during, _ = probe.seen
    assert during is not own and issubclass(during, own)
    assert (during.__name__, during.__module__) == (own.__name__, own.__module__)
    # The steps are the subclass's, not the instance's.
    assert {"train_step", "test_step", "make_train_function"} & set(probe.seen[1]) == set()
    assert "train_step" in vars(during)
    assert type(model) is own
    assert set(vars(model)) - before <= {"train_function", "test_function", "predict_function",
                                         "stop_training", "history", "_eval_epoch_iterator"}
    assert model.train_function is None


def test_the_class_comes_back_when_fit_fails():
    model = compile_model(build_mlp())
    own = type(model)
    x, y = make_data(64)

    class Fails(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        tfpar.fit_distributed(model, x, y, batch_size=32, epochs=1, verbose=0,
                              strategy=tfpar.strategies.DataParallel(2), callbacks=[Fails()])
    assert type(model) is own


def test_a_model_saved_during_fit_names_the_callers_class(tmp_path):
    model = compile_model(build_mlp())
    x, y = make_data(64)
    path = tmp_path / "during.keras"
    tfpar.fit_distributed(model, x, y, batch_size=32, epochs=1, verbose=0,
                          strategy=tfpar.strategies.DataParallel(2),
                          callbacks=[keras.callbacks.ModelCheckpoint(str(path))])
    restored = keras.models.load_model(path)
    assert type(restored) is type(model)
    np.testing.assert_allclose(restored.predict(x[:8], verbose=0), model.predict(x[:8], verbose=0),
                               rtol=1e-5, atol=1e-6)


@keras.saving.register_keras_serializable(package="tfpar_test")
class Registered(keras.Model):
    """A keras.io-style subclassed model, registered for saving."""

    def __init__(self, units=4, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden = keras.layers.Dense(units, activation="relu")
        self.out = keras.layers.Dense(4)

    def call(self, inputs):
        return self.out(self.hidden(inputs))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_a_registered_class_saved_during_fit_loads_as_itself(tmp_path):
    x, y = make_data(64)
    keras.utils.set_random_seed(0)
    model = compile_model(Registered())
    model(x[:1])
    path = tmp_path / "during.keras"
    tfpar.fit_distributed(model, x, y, batch_size=32, epochs=1, verbose=0,
                          strategy=tfpar.strategies.DataParallel(2, microbatches=2),
                          callbacks=[keras.callbacks.ModelCheckpoint(str(path))])
    restored = keras.models.load_model(path)
    assert type(restored) is Registered
    assert keras.saving.get_registered_name(Registered) == "tfpar_test>Registered"
    np.testing.assert_allclose(restored.predict(x[:8], verbose=0), model.predict(x[:8], verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_a_model_with_its_own_train_step_keeps_it():
    class Own(keras.Model):
        def train_step(self, data):
            self.called = True
            return super().train_step(data)

    inputs = keras.Input((8,))
    model = compile_model(Own(inputs, keras.layers.Dense(4)(inputs)))
    strategy = tfpar.strategies.DataParallel(2)
    with strategy.scope(), pytest.warns(UserWarning, match=r"overrides \['train_step'\]"), \
            replicated(model, strategy):
        assert type(model).train_step is Own.train_step
    assert type(model) is Own
