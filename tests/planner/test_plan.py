"""tfpar.plan on real measurements, strategy="auto", and the binary's
--strategy=auto: the planner's choice trains exactly like one device."""

import keras
import numpy as np
import pytest
from absl import flags

from tfpar import train
from tfpar.bench import __main__ as bench
from tfpar.planner import trials
from tfpar.planner.cost_model import Coefficients
import tfpar

from conftest import ADAM_ATOL, assert_same_weights, weights_of

FIT = dict(batch_size=64, epochs=2, shuffle=False, verbose=0)


def softmax_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(4, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def data(samples=256):
    rng = np.random.default_rng(0)
    return rng.normal(size=(samples, 16)).astype("float32"), rng.integers(0, 4, size=samples)


@pytest.fixture(scope="module")
def planned():
    return tfpar.plan(softmax_model(), batch_size=64)


def test_plan_predicts_every_layout_and_chooses_a_feasible_one(planned):
    plan = planned
    names = [c.name for c in plan.candidates]
    assert {"one device", "DataParallel(2)", "DataParallel(4)", "ModelSplit(2)",
            "GPipe(2, M=8, 1f1b)", "GPipe(2x2, M=2, zb1, remat)"} <= set(names)
    assert plan.chosen is plan.candidates[0] and plan.chosen.feasible
    assert plan.chosen.reason.startswith("fastest feasible")
    for candidate in plan.candidates:
        if candidate.feasible:
            assert 0 < candidate.predicted_step_seconds < 10
            assert len(candidate.predicted_peak_bytes) == len(candidate.options["devices"])
    rejected = {c.name: c.reason for c in plan.candidates if not c.feasible}
    assert rejected["DataParallel(3)"] == "batch_size 64 is not divisible by 3 replicas"
    assert str(plan).splitlines()[3].startswith("*  " + plan.chosen.name)


def test_calibration_runs_contrasting_layouts_and_fits_the_terms_to_them(planned):
    tried = [c for c in planned.candidates if c.anchor]
    assert {"one device", "DataParallel(4)", "ModelSplit(2)", "GPipe(2x2, M=2, 1f1b)"} <= {c.name for c in tried}
    for candidate in tried:
        assert 0 < candidate.measured_step_seconds < 10 and candidate.measured_peak_bytes > 0
        assert candidate.predicted_step_seconds == pytest.approx(
            candidate.prediction.recombined(planned.coefficients).seconds)

    ran = [c for c in planned.candidates if c.measured_step_seconds is not None]

    def squared_error(coefficients):
        return sum((c.prediction.recombined(coefficients).seconds / c.measured_step_seconds - 1) ** 2
                   for c in ran)

    # The last fit is to every layout that ran (the anchors and the ones run
    # to confirm the choice). Its objective is the squared relative error
    # plus a penalty that is 0 at the defaults: its optimum cannot explain
    # them worse.
    assert planned.coefficients != Coefficients()
    assert squared_error(planned.coefficients) <= squared_error(Coefficients()) + 1e-12
    assert "tried ms" in str(planned).splitlines()[1]


def test_the_choice_goes_by_measurement_where_a_layout_ran(planned):
    from tfpar.planner import plans, search

    feasible = [c for c in planned.candidates if c.feasible]
    confirmed = [c for c in feasible if c.measured_step_seconds is not None and not c.anchor]
    # The best layout ran, unless every confirmation was spent.
    assert planned.chosen.measured_step_seconds is not None or len(confirmed) == plans.CONFIRM
    assert all(search.expected_seconds(planned.chosen) <= search.expected_seconds(c) for c in feasible)
    if planned.chosen.measured_step_seconds is not None:
        assert "ms/step measured" in planned.chosen.reason


def test_without_calibration_the_layers_timings_are_added_as_measured():
    plan = tfpar.plan(softmax_model(), batch_size=64, calibrate=False)
    assert plan.coefficients == Coefficients()
    assert all(c.measured_step_seconds is None for c in plan.candidates)


def wide_model() -> keras.Model:
    """Two 256 x 256 layers hold most of the weights: half of them fits
    where all of them does not."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,))] + [keras.layers.Dense(256, activation="relu")
                                                      for _ in range(3)]
                             + [keras.layers.Dense(4, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_a_memory_limit_rules_out_what_does_not_fit_and_the_choice_trains_exactly():
    model = wide_model()
    weights = sum(w.size for w in model.get_weights()) * 4
    # One device holds the weights, their gradients and Adam's two slots:
    # 4x the weights. The limit, 3x, leaves room for half the model only.
    # Uncalibrated: the footprint is then exactly the one counted here.
    plan = tfpar.plan(model, batch_size=64, memory_limit=int(weights * 3), calibrate=False)
    by_name = {c.name: c for c in plan.candidates}
    assert not by_name["one device"].feasible
    assert by_name["one device"].reason.startswith("needs ")
    assert by_name["one device"].reason.endswith(f"on /device:CPU:0, limit {weights * 3 / 2**20:.1f} MiB")
    assert not by_name["DataParallel(2)"].feasible
    assert plan.chosen.kind in ("ModelSplit", "GPipe")
    x, y = data()
    reference = wide_model()
    start = weights_of(reference)
    reference.fit(x, y, **FIT)
    tfpar.fit_distributed(model, x, y, strategy=plan.chosen.strategy, **FIT)
    assert_same_weights(weights_of(model), weights_of(reference), atol=ADAM_ATOL)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(weights_of(reference), start)) > 1e-3


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"memory_limit must be bytes per device.*memory_limit=\[1, 2\]"):
        tfpar.plan(softmax_model(), 64, memory_limit=[1, 2])
    with pytest.raises(ValueError, match=r"device_speeds=\[1\]"):
        tfpar.plan(softmax_model(), 64, device_speeds=[1])


def test_a_subclassed_model_is_refused_with_what_to_use_instead():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Subclassed()
    model(np.zeros((1, 16), "float32"))  # built by a call, as Keras examples do
    model.compile(optimizer="adam", loss="mse")
    before = weights_of(model)
    with pytest.raises(ValueError, match=r"tfpar.plan .* layer by layer.*subclassed.*strategy='mirrored'"):
        tfpar.plan(model, 64)
    for now, then in zip(weights_of(model), before):
        np.testing.assert_array_equal(now, then)


def test_the_profile_counts_what_a_layer_makes_not_only_its_output():
    from tfpar.planner import profile

    length, heads, width = 16, 4, 8
    tokens = keras.Input((length, width))
    attended = keras.layers.MultiHeadAttention(heads, width, name="attention")(tokens, tokens)
    model = keras.Model(tokens, keras.layers.Dense(3, activation="relu", name="dense")(attended))
    layers = {l.name: l for l in profile.measure(model, batch_size=8, smallest_rows=2, repeats=1).layers}
    # Per sample, float32: attention's scores and their softmax are heads x
    # length x length each, eight times its output here; a Dense with an
    # activation makes its product, the bias added and the activation.
    assert layers["attention"].output_bytes == length * width * 4
    assert layers["attention"].activation_bytes >= 2 * heads * length * length * 4
    assert layers["dense"].activation_bytes == 3 * layers["dense"].output_bytes


def test_auto_trains_exactly_like_one_device(capsys):
    x, y = data()
    reference = softmax_model()
    start = weights_of(reference)
    expected = reference.fit(x, y, **FIT).history
    model = softmax_model()
    history = tfpar.fit_distributed(model, x, y, strategy="auto", **{**FIT, "verbose": 2}).history
    assert "tfpar strategy='auto': " in capsys.readouterr().out
    assert_same_weights(weights_of(model), weights_of(reference), atol=ADAM_ATOL)
    # A run that trains nothing moves 0 (Adam at 1e-3 over 8 steps: ~8e-3).
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(weights_of(reference), start))
    assert moved > 1e-3
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-4)


def test_the_binary_prints_the_plan_first(capsys):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["tfpar.train", "--strategy=auto", "--epochs=1", "--save="])
    train.main(["tfpar.train"])
    out = capsys.readouterr().out
    assert out.index("tfpar plan: batch_size 64") < out.index("strategy: ") < out.index("held-out accuracy")


def test_the_plan_benchmark_compares_predicted_and_measured():
    result = bench.run(["plan", "--models=mlp", "--max_candidates=2", "--steps=3", "--batch_size=32"])
    assert result["models"]["mlp"]["measured"] == 2
    assert 0 <= result["time_error"] < 10 and result["chosen_vs_best"] >= 1.0


def reference_model(name: str):
    """The reference models, small, with the data they train on. SGD: the
    Transformer has gradients that are zero in exact arithmetic, which
    Adam would turn into steps (see tests/models/test_transformer.py); no
    BatchNormalization in the CNN, whose per-micro-batch statistics
    legitimately differ from one device's (docs/guide.md)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    if name == "mlp":
        model = tfpar.models.mlp(16, 4, hidden=(32, 32))
        x, y = rng.normal(size=(64, 16)).astype("float32"), rng.integers(0, 4, size=64)
    elif name == "cnn":
        model = tfpar.models.residual_cnn((8, 8, 3), 4, filters=(8, 16), batch_norm=False)
        x, y = rng.normal(size=(64, 8, 8, 3)).astype("float32"), rng.integers(0, 4, size=64)
    else:
        model = tfpar.models.transformer(7, 4, 4, width=8, heads=2, feed_forward=16, encoder_blocks=1,
                                         decoder_blocks=1)
        (x, y), _ = tfpar.datasets.reversal(samples=80, length=4, vocab_size=7, test_fraction=0.2)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, x, y


# The MLP case is test_auto_trains_exactly_like_one_device.
@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_auto_trains_the_reference_models_exactly(name):
    fit = dict(batch_size=32, epochs=1, shuffle=False, verbose=0)
    reference, x, y = reference_model(name)
    start = weights_of(reference)
    reference.fit(x, y, **fit)
    model, _, _ = reference_model(name)
    if name == "transformer":
        # The plan without calibration's trials: on the Transformer they
        # take minutes here, and the string "auto" (which runs them) is
        # test_auto_trains_exactly_like_one_device's.
        tfpar.fit_distributed(model, x, y, strategy=tfpar.plan(model, 32, calibrate=False).chosen.strategy,
                              **fit)
    else:
        tfpar.fit_distributed(model, x, y, strategy="auto", **fit)
    # SGD: float32 round-off of a different summation order, far below a step.
    assert_same_weights(weights_of(model), weights_of(reference), rtol=1e-5, atol=1e-6)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(weights_of(reference), start)) > 1e-3


def test_auto_trains_a_keras_hub_model_with_dict_inputs_exactly():
    # keras_hub's BertTextClassifier: dict inputs (token_ids, segment_ids,
    # padding_mask), and layers whose calls in the graph pass `training`
    # themselves; the profile once called the model with a list and such a
    # layer with `training` twice.
    keras_hub = pytest.importorskip("keras_hub")
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 64, (32, 8)).astype("int32")
    x = {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": np.ones_like(ids)}
    y = rng.integers(0, 2, 32)

    def classifier():
        keras.utils.set_random_seed(0)
        backbone = keras_hub.models.BertBackbone(vocabulary_size=64, num_layers=1, num_heads=2,
                                                 hidden_dim=16, intermediate_dim=32,
                                                 max_sequence_length=8, dropout=0.0)
        model = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None,
                                                    dropout=0.0)
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    fit = dict(batch_size=16, epochs=1, shuffle=False, verbose=0)
    reference = classifier()
    start = weights_of(reference)
    reference.fit(x, y, **fit)
    model = classifier()
    # What strategy="auto" does, with calibration's trials cut to one short
    # run (the full planner on a Transformer takes minutes here).
    chosen = tfpar.plan(model, 16, calibrate=False).chosen
    seconds, _ = trials.run(model, chosen.strategy, 16, steps=2, warmup=1)
    assert seconds > 0
    tfpar.fit_distributed(model, x, y, strategy=chosen.strategy, **fit)
    assert_same_weights(weights_of(model), weights_of(reference), atol=ADAM_ATOL)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(weights_of(reference), start)) > 1e-3
