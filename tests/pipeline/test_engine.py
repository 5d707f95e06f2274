"""The pipeline engine's own behaviour: schedule order on devices, timeline."""

import keras
import numpy as np
import pytest

from tfpar.pipeline import schedule as schedule_lib, step as step_lib
from tfpar.strategies import GPipe
import tfpar

from conftest import build_mlp, compile_model, make_data


class Capture(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        self.timeline = self.model.last_timeline()
        self.order = self.model.task_order


def run_with_timeline(schedule, microbatches=4):
    x, y = make_data(64)
    capture = Capture()
    tfpar.fit_distributed(compile_model(build_mlp()), x, y, batch_size=32, verbose=0,
                          strategy=GPipe(2, microbatches=microbatches, schedule=schedule,
                                         record_timeline=True), callbacks=[capture])
    return {task: interval for task, interval in zip(capture.order, capture.timeline)}


def test_timeline_shows_each_stage_running_its_tasks_in_schedule_order():
    # Start stamps are exact (a task's ops wait for theirs); end stamps may
    # come late, so the order is checked on starts.
    for name in ("gpipe", "1f1b", "zb1"):
        intervals = run_with_timeline(name)
        kinds = "FBW" if name == "zb1" else "FB"
        assert sorted(intervals) == sorted((s, (k, m)) for s in (0, 1) for k in kinds for m in range(4))
        for (stage, (kind, micro)), (start, end) in intervals.items():
            assert end >= start > 0
            if kind == "F" and stage == 1:  # needs stage 0's output
                assert start > intervals[(0, ("F", micro))][0]
            if kind == "B" and stage == 0:  # needs stage 1's gradient
                assert start > intervals[(1, ("B", micro))][0]
            if kind == "W":  # the weight half after the input half
                assert start > intervals[(stage, ("B", micro))][0]
        for stage in (0, 1):
            starts = [intervals[(s, t)][0] for (s, t) in intervals if s == stage]
            # Chained: a stage starts its tasks one after another, in order.
            assert all(b > a for a, b in zip(starts, starts[1:]))


def test_1f1b_starts_a_backward_before_the_last_forward_on_stage_0():
    intervals = run_with_timeline("1f1b")
    assert intervals[(0, ("B", 0))][0] <= intervals[(0, ("F", 3))][0]
    gpipe = run_with_timeline("gpipe")
    assert gpipe[(0, ("B", 0))][0] > gpipe[(0, ("F", 3))][0]


def test_zb1_defers_weight_gradients_past_the_next_forward():
    # Traced, a W task's ops wait for the task before it in its stage's
    # sequence: on stage 1, W0 comes after F1 (zb1's order), and its start
    # stamp, which waits for the ops before it, follows F1's.
    intervals = run_with_timeline("zb1")
    sequence = schedule_lib.per_stage("zb1", 2, 4)[1]
    assert sequence.index(("W", 0)) > sequence.index(("F", 1))
    assert intervals[(1, ("W", 0))][0] > intervals[(1, ("F", 1))][0]


@pytest.mark.parametrize("strategy, replicas", [
    (lambda: GPipe(2, microbatches=2, schedule="zb1"), 1),
    (lambda: GPipe(4, microbatches=2, schedule="1f1b", data_parallel=2), 2),
])
def test_the_engine_runs_the_program_the_schedule_layer_makes(strategy, replicas):
    # Every task the train step runs, all-reduces included, is the schedule
    # layer's: the engine adds none of its own.
    model = compile_model(build_mlp())
    made = strategy()
    trained = made.recreate(model)
    try:
        expected = schedule_lib.step_order(made.schedule, 2, 2, replicas=replicas,
                                           all_reduce=replicas > 1)
        assert trained.task_order == expected
        assert sum(task.kind == "A" for _, task in expected) == (2 * replicas if replicas > 1 else 0)
        forwards = schedule_lib.step_order("gpipe", 2, 2, replicas=replicas)
        assert trained.plan.forward_order == [(s, task) for s, task in forwards if task.kind == "F"]
    finally:
        made.discard(trained, model)


def test_no_timeline_unless_asked():
    x, y = make_data(32)
    capture = Capture()
    tfpar.fit_distributed(compile_model(build_mlp()), x, y, batch_size=32, verbose=0,
                          strategy=GPipe(2, microbatches=2), callbacks=[capture])
    assert capture.timeline is None


def test_batch_norm_uses_micro_batch_statistics_and_moving_averages():
    """Documented GPipe behaviour: statistics per micro-batch, moving stats
    updated once per micro-batch; evaluation uses the moving statistics."""
    x, y = make_data(32)
    model = compile_model(build_mlp(batch_norm=True))
    tfpar.fit_distributed(model, x, y, batch_size=32, verbose=0, shuffle=False,
                          strategy=GPipe(2, microbatches=4))
    bn = model.get_layer("bn_0")
    # Replay by hand: 4 micro-batches of 8, each updating the moving mean.
    keras.utils.set_random_seed(0)
    reference = build_mlp(batch_norm=True)
    hidden = reference.get_layer("dense_0")(x)
    mean = np.zeros(16, "float32")
    for i in range(4):
        mean = mean * 0.99 + np.mean(np.array(hidden[i * 8:(i + 1) * 8]), axis=0) * 0.01
    np.testing.assert_allclose(np.array(bn.moving_mean), mean, rtol=1e-5, atol=1e-7)


def test_gpipe_is_a_drop_in_for_fit(tmp_path, capsys):
    """Validation, sample weights, callbacks, progress bar, then the caller's
    model evaluates, predicts and saves the trained result."""
    x, y = make_data(96)
    weights = np.linspace(0.5, 1.5, len(x)).astype("float32")
    fit = dict(batch_size=16, epochs=2, shuffle=False, validation_split=0.25, sample_weight=weights)
    reference = compile_model(build_mlp(), "adam")
    expected = reference.fit(x, y, verbose=0, **fit).history
    model = compile_model(build_mlp(), "adam")
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), save_best_only=True)
    history = tfpar.fit_distributed(model, x, y, verbose=1, callbacks=[checkpoint],
                                    strategy=GPipe(2, microbatches=4, schedule="1f1b"), **fit)
    assert "Epoch 2/2" in capsys.readouterr().out
    assert sorted(history.history) == sorted(expected)
    for key, values in expected.items():
        np.testing.assert_allclose(history.history[key], values, rtol=1e-5, atol=1e-6, err_msg=key)
    assert (tmp_path / "best.keras").exists()
    np.testing.assert_allclose(model.predict(x, verbose=0), reference.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.evaluate(x, y, verbose=0), reference.evaluate(x, y, verbose=0), rtol=1e-5)
    model.save(tmp_path / "trained.keras")
    loaded = keras.models.load_model(tmp_path / "trained.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


def test_rematerialized_dropout_replays_the_same_masks():
    """With rematerialisation, the recomputed forward must reuse the first
    pass's dropout masks: then one step equals the same step without it."""
    x, y = make_data(32)

    def train(remat):
        keras.utils.set_random_seed(0)
        model = compile_model(tfpar.models.mlp(12, 3, hidden=(16, 16), dropout=0.5))
        tfpar.fit_distributed(model, x, y, batch_size=32, verbose=0, shuffle=False,
                              strategy=GPipe(2, microbatches=2, rematerialize=remat))
        return [np.array(w) for w in model.get_weights()]

    for a, b in zip(train(False), train(True)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def softmax_head_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(8, activation="relu", name="hidden"),
                              keras.layers.Dense(3, activation="softmax", name="head")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def test_a_lost_gradient_is_an_error_never_zeros(monkeypatch):
    # Break the gradient path on purpose: the loss's gradient reaches the
    # softmax head only through the logits Keras reads, so dropping that
    # source starves the head (the defect this engine once had, silently).
    monkeypatch.setattr(step_lib, "loss_sources", lambda tensor: [("value", tensor)])
    model = softmax_head_model()
    before = [w.copy() for w in model.get_weights()]
    x, y = make_data(64)
    with pytest.raises(ValueError, match=r"no gradient reached .*'head/kernel' \(stage 1\).*one device"):
        tfpar.fit_distributed(model, x, y, batch_size=32, verbose=0, strategy=GPipe(2, microbatches=2))
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_embedding_gradients_stay_sparse_so_adam_matches_one_device():
    # Repeated token ids: Keras applies an IndexedSlices gradient entry by
    # entry (Adam squares each), which a densified sum would not match.
    def build():
        keras.utils.set_random_seed(2)
        inputs = keras.Input((6,), dtype="int32")
        x = keras.layers.Embedding(5, 4, name="embed")(inputs)
        x = keras.layers.GlobalAveragePooling1D()(x)
        model = keras.Model(inputs, keras.layers.Dense(3, name="head")(x))
        model.compile(optimizer=keras.optimizers.Adam(0.01),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, (64, 6)), rng.integers(0, 3, 64)
    assert_trains_like_one_device(build, x, y, GPipe(2, microbatches=2), batch_size=16, atol=1e-5)


def test_a_position_embedding_shared_by_all_samples_matches_one_device_under_adam():
    # keras.io's TokenAndPositionEmbedding looks positions up once per batch:
    # its gradient has one entry per position, summed over the samples.
    class PositionEmbedding(keras.layers.Layer):
        def __init__(self, length, width):
            super().__init__()
            self.table = keras.layers.Embedding(length, width)

        def call(self, x):
            return x + self.table(keras.ops.arange(keras.ops.shape(x)[1]))

    def build():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8, 4))
        x = keras.layers.Flatten()(PositionEmbedding(8, 4)(inputs))
        model = keras.Model(inputs, keras.layers.Dense(1)(x))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        return model

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8, 4)).astype("float32"), rng.normal(size=(64, 1)).astype("float32")
    assert_trains_like_one_device(build, x, y, GPipe(2, microbatches=4), batch_size=32, atol=1e-6)


def assert_trains_like_one_device(build, x, y, strategy, *, batch_size, atol):
    """Two epochs of `build()` under `strategy` end as one device's do."""
    reference = build()
    reference.fit(x, y, batch_size=batch_size, epochs=2, shuffle=False, verbose=0)
    model = build()
    tfpar.fit_distributed(model, x, y, batch_size=batch_size, epochs=2, shuffle=False, verbose=0,
                          strategy=strategy)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol)
