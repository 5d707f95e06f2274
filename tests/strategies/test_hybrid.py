"""Pipeline replicas trained data parallel (data_parallel=R): exact against
one device, each stage's weights and optimizer state on its own device,
each stage's all-reduce its own task, clear errors before training.

R = 2 replicas x K = 2 stages on the 4 logical CPUs. Tolerance: float32
round-off (conftest.assert_same_weights): the replicas' gradients are summed
in another order than one device sums the batch's.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpar.strategies import GPipe, ModelSplit
import tfpar

from conftest import assert_same_weights, weights_of
from test_pipeline_contract import FIT, build, data, reference

CASES = {
    "split": lambda: ModelSplit(4, data_parallel=2),
    "gpipe-M2": lambda: GPipe(4, microbatches=2, data_parallel=2),
    "1f1b-M4-remat": lambda: GPipe(4, microbatches=4, schedule="1f1b", rematerialize=True,
                                   data_parallel=2),
}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", ["mlp", "skip"])  # skip: a tensor crosses the stage boundary
def test_hybrid_trains_exactly_like_one_device(name, case, optimizer):
    model = build(name, optimizer)
    before = weights_of(model)
    history = tfpar.fit_distributed(model, *data(name), strategy=CASES[case](), **FIT)
    weights, losses = reference(name, optimizer)
    assert_same_weights(weights_of(model), weights)
    # ... and it trained: the weights moved as far as on one device.
    travel = max(np.abs(a - b).max() for a, b in zip(weights, before))
    assert travel > 1e-2
    np.testing.assert_allclose(history.history["loss"], losses, rtol=1e-5)


def embedding_model():
    keras.utils.set_random_seed(2)
    tokens = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(20, 8)(tokens)
    h = keras.layers.GlobalAveragePooling1D()(h)
    out = keras.layers.Dense(3, activation="softmax")(h)
    model = keras.Model(tokens, out)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy")
    return model


def test_embedding_gradients_are_gathered_exactly_under_adam():
    # Repeated token ids: Adam squares each IndexedSlices entry, so summing
    # the replicas' slices densely would change the update; they are gathered.
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, size=(32, 6)).astype("int32"), rng.integers(0, 3, size=32)
    reference_model = embedding_model()
    reference_model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    model = embedding_model()
    tfpar.fit_distributed(model, x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                          strategy=GPipe(4, microbatches=2, data_parallel=2, record_timeline=True))
    assert_same_weights(weights_of(model), weights_of(reference_model))


class Recorder(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        pipeline = self.model
        self.placed = [(v.path, v.value.device) for stage in pipeline.stages
                       for v in stage.model.trainable_variables]
        self.stage_devices = [stage.device for stage in pipeline.stages]
        self.slots = [(v.path, v.value.device) for v in pipeline.optimizer.variables]
        self.replicas = [weights_of(t) for t in [pipeline.twin] + pipeline.replicas]
        self.order, self.times = pipeline.task_order, pipeline.last_timeline()


def test_each_device_holds_only_its_stage_and_replicas_stay_identical():
    model = build("mlp", "adam")
    recorder = Recorder()
    tfpar.fit_distributed(model, *data("mlp"), strategy=GPipe(4, microbatches=2, data_parallel=2,
                                                              record_timeline=True),
                          callbacks=[recorder], **FIT)
    assert recorder.stage_devices == [f"/device:CPU:{i}" for i in range(4)]
    devices = {path_device[1] for path_device in recorder.placed}
    assert len(devices) == 4  # every device holds weights ...
    by_device = {}
    for path, device in recorder.placed:
        by_device.setdefault(device[-1], set()).add(path)
    # ... stage s of both replicas holds the same layers, and no device
    # holds another stage's.
    assert by_device["0"] == by_device["2"] and by_device["1"] == by_device["3"]
    assert not by_device["0"] & by_device["1"]
    slot_devices = {device[-1] for path, device in recorder.slots if "momentum" in path or "velocity" in path}
    assert slot_devices == {"0", "1", "2", "3"}  # optimizer state next to its weights
    for a, b in zip(*recorder.replicas):
        np.testing.assert_array_equal(a, b)  # every replica applied the same update
    # The caller gets replica 0's weights.
    for a, b in zip(weights_of(model), recorder.replicas[0]):
        np.testing.assert_array_equal(a, b)
    # Each stage's all-reduce is a task of its own on each replica, after
    # the stage's last backward.
    reduces = [(stage, str(task)) for stage, task in recorder.order if task.kind == "A"]
    assert sorted(reduces) == [(0, "A0"), (1, "A0"), (2, "A0"), (3, "A0")]
    intervals = tfpar.timeline.intervals(recorder.order, recorder.times)
    for stage in range(4):
        own = [t for t in intervals if t.stage == stage]
        last_backward = max(t.end for t in own if t.kind == "B")
        reduce = next(t for t in own if t.kind == "A")
        assert reduce.start >= last_backward - 1e-6
    trace = tfpar.timeline.chrome_trace(intervals)["traceEvents"]
    assert sum(e.get("cat") == "all-reduce" for e in trace) == 4
    # The ideal bubble is one K = 2 pipeline's with M = 2, not K = 4's.
    assert tfpar.timeline.ideal_bubble(intervals, 2) == pytest.approx(1 / 3)


def test_hybrid_placement_is_a_replica_by_stage_grid():
    table = tfpar.describe_placement(build("mlp", "sgd"), GPipe(4, data_parallel=2), show=False)
    lines = str(table).splitlines()
    assert lines[0].split()[:3] == ["replica", "stage", "device"]
    assert [line.split()[:3] for line in lines[2:]] == [
        ["0", "0", "/device:CPU:0"], ["0", "1", "/device:CPU:1"],
        ["1", "0", "/device:CPU:2"], ["1", "1", "/device:CPU:3"]]


def test_device_count_not_divisible_by_replicas_is_a_clear_error():
    with pytest.raises(ValueError, match=r"data_parallel=2 .* multiple of 2. Received 3 devices"):
        GPipe(3, data_parallel=2)
    with pytest.raises(ValueError, match=r"data_parallel must be a whole number >= 1.*Received: data_parallel=0"):
        ModelSplit(2, data_parallel=0)


def test_batch_not_divisible_by_replicas_times_microbatches_is_a_clear_error():
    model = build("mlp", "sgd")
    before = weights_of(model)
    with pytest.raises(ValueError, match=r"replicas x micro-batches \(8\).*Received: batch_size=12"):
        tfpar.fit_distributed(model, *data("mlp"), batch_size=12, verbose=0,
                              strategy=GPipe(4, microbatches=4, data_parallel=2))
    for a, b in zip(weights_of(model), before):
        np.testing.assert_array_equal(a, b)


def test_a_second_fit_resumes_from_the_optimizer_state_exactly():
    # The caller's Adam state goes into every replica and comes back.
    x, y = data("mlp")
    one = build("mlp", "adam")
    for _ in range(2):
        one.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    model = build("mlp", "adam")
    for _ in range(2):
        tfpar.fit_distributed(model, x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
                              strategy=GPipe(4, microbatches=2, data_parallel=2))
    assert_same_weights(weights_of(model), weights_of(one))
    assert_same_weights([v.numpy() for v in model.optimizer.variables],
                        [v.numpy() for v in one.optimizer.variables])


class StepGraph(keras.callbacks.Callback):
    """The graph of one train step of the pipeline (traced, never run)."""

    def __init__(self, x, y):
        super().__init__()
        self.specs = (tf.TensorSpec((16, *x.shape[1:]), x.dtype), tf.TensorSpec((16,), y.dtype))

    def on_train_end(self, logs=None):
        self.graph = tf.function(self.model.train_step).get_concrete_function(self.specs).graph


def upstream(op) -> set:
    seen, todo = set(), [op]
    while todo:
        current = todo.pop()
        for parent in [t.op for t in current.inputs] + list(current.control_inputs):
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def test_a_stages_all_reduce_does_not_wait_for_an_earlier_stages_backward():
    # The last stage's sum may start once its own last backward is done:
    # nothing upstream of it is stage 0's backward (its gradient ops).
    x, y = data("mlp")
    recorder = StepGraph(x, y)
    tfpar.fit_distributed(build("mlp", "sgd"), x, y, strategy=GPipe(4, microbatches=2, data_parallel=2),
                          callbacks=[recorder], **FIT)
    reduces = {op.device[-1]: op for op in recorder.graph.get_operations() if op.type == "CollectiveReduce"}
    assert sorted(reduces) == ["0", "1", "2", "3"]
    for last, first in (("1", "0"), ("3", "2")):
        before = upstream(reduces[last])
        assert any(op.device.endswith(f"CPU:{first}") for op in before)  # its forward feeds stage 1
        assert not [op.name for op in before
                    if op.device.endswith(f"CPU:{first}") and "gradient_tape" in op.name]
        # ... while stage 0's own sum does wait for its backward.
        assert any("gradient_tape" in op.name for op in upstream(reduces[first])
                   if op.device.endswith(f"CPU:{first}"))


def test_the_collectives_carry_the_jobs_timeout():
    # Across workers a dead peer must fail the step after MultiWorker's
    # timeout_seconds, not hang it: the timeout is on every collective.
    from tfpar.pipeline.replicas import StageAllReduce

    reduce = StageAllReduce(2, ["/device:CPU:0", "/device:CPU:1"], timeout_seconds=7)

    def step():
        return reduce([[tf.ones(3)], [tf.ones(3)]], batch=[])

    graph = tf.function(step).get_concrete_function().graph
    ops = [op for op in graph.get_operations() if op.type == "CollectiveReduce"]
    assert len(ops) == 2 and all(op.get_attr("timeout_seconds") == 7.0 for op in ops)
