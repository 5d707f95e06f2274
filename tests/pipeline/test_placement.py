"""Placement: layer order, stage boundaries, devices of variables and ops."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpar.pipeline import placement
from tfpar.strategies import GPipe, ModelSplit
import tfpar

from conftest import compile_model


def skip_model():
    a = keras.Input((6,), name="a")
    b = keras.Input((4,), name="b")
    early = keras.layers.Dense(12, activation="tanh", name="early")(a)
    h = keras.layers.Dense(12, name="mid1")(early)
    h = keras.layers.Dense(12, name="mid2")(h)
    side = keras.layers.Dense(12, name="side")(b)
    h = keras.layers.Add(name="join")([h, early, side])
    return keras.Model([a, b], keras.layers.Dense(3, name="head")(h), name="skip")


def test_operations_are_in_topological_order_without_inputs():
    names = [op.name for op in placement.operations(skip_model())]
    assert names.index("early") < names.index("mid1") < names.index("join") < names.index("head")
    assert "a" not in names and len(names) == 6


def test_skip_connection_and_second_input_cross_to_the_consuming_stage():
    model = skip_model()
    ops = [op.name for op in placement.operations(model)]
    sizes = [ops.index("mid1") + 1, len(ops) - ops.index("mid1") - 1]
    graph = placement.build_stages(model, ["/device:CPU:0", "/device:CPU:1"], sizes)
    first, second = graph.stages
    early = id(model.get_layer("early").output)
    b = id(model.inputs[1])
    assert "early" in first.layer_names and "join" in second.layer_names
    assert early in first.output_keys and early in second.input_keys
    assert b in second.input_keys and b not in first.input_keys
    x = [np.ones((2, 6), "float32"), np.ones((2, 4), "float32")]
    out1 = first.model([x[0]])
    env = dict(zip(first.output_keys, out1))
    env[b] = tf.constant(x[1])
    np.testing.assert_allclose(second.model([env[k] for k in second.input_keys]), model(x), rtol=1e-6)


def test_variables_live_on_their_stage_device_and_ops_run_there():
    keras.utils.set_random_seed(0)
    model = compile_model(tfpar.models.mlp(12, 3, hidden=(16, 16, 8)))
    strategy = GPipe(["cpu:2", "cpu:3"], microbatches=2, balance=[2, 2])
    trained = strategy.recreate(model)
    devices = {v.path: tf.DeviceSpec.from_string(v.value.device).device_index for v in trained.weights}
    assert {devices["dense_0/kernel"], devices["dense_1/kernel"]} == {2}
    assert {devices["dense_2/kernel"], devices["logits/kernel"]} == {3}
    spec = (tf.TensorSpec((8, 12), tf.float32), tf.TensorSpec((8,), tf.int32))
    graph = tf.function(trained.train_step).get_concrete_function(spec).graph
    matmuls = [op for op in graph.get_operations() if op.type == "MatMul"]
    placed = {tf.DeviceSpec.from_string(op.device).device_index for op in matmuls}
    # Forward and backward (gradient) matmuls alike sit on the stage devices:
    # each stage's backward is computed under its own device.
    assert placed == {2, 3} and all(op.device for op in matmuls)
    gradient_matmuls = [op for op in matmuls if "gradient" in op.name.lower()]
    assert gradient_matmuls and {tf.DeviceSpec.from_string(op.device).device_index for op in gradient_matmuls} == {2, 3}


def test_nested_model_counts_as_one_layer():
    inner = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8), keras.layers.Dense(8)], name="inner")
    x = keras.Input((8,))
    model = keras.Model(x, keras.layers.Dense(2, name="top")(inner(keras.layers.Dense(8, name="bottom")(x))))
    assert [op.name for op in placement.operations(model)] == ["bottom", "inner", "top"]
    twin = keras.models.clone_model(model, clone_function=placement.device_function(
        model, ["/device:CPU:0", "/device:CPU:1", "/device:CPU:2"], [1, 1, 1]))
    inner_devices = {tf.DeviceSpec.from_string(v.value.device).device_index
                     for v in twin.get_layer("inner").weights}
    assert inner_devices == {1}


def test_describe_placement_prints_a_table(capsys):
    keras.utils.set_random_seed(0)
    model = tfpar.models.mlp(12, 3, hidden=(16, 16))
    table = tfpar.describe_placement(model, ModelSplit(2, balance="params"))
    out = capsys.readouterr().out
    assert "stage" in out and "/device:CPU:1" in out and "est. FLOPs/sample" in out
    assert [row[3] for row in table.rows] == [1, 2]  # 208 params | 272 + 51
    replicated = tfpar.describe_placement(model, "mirrored", show=False)
    assert len(replicated.rows) == 4 and "all 3 layers" in replicated.rows[0][2]


@pytest.mark.parametrize("balance", ["params", "flops", "time"])
def test_every_cost_source_gives_a_valid_split(balance):
    keras.utils.set_random_seed(0)
    model = tfpar.models.residual_cnn((8, 8, 1), 3, filters=(4, 8))
    sizes = ModelSplit(3, balance=balance).sizes(model)
    assert len(sizes) == 3 and sum(sizes) == len(placement.operations(model))


def test_flops_estimates_match_hand_counts():
    from tfpar.pipeline import costs

    x = keras.Input((5, 5, 3))
    conv = keras.layers.Conv2D(4, 3, padding="same")
    conv(x)
    # 2 * (3*3*3*4 kernel) * 25 positions + 100 outputs (bias etc.)
    assert costs.flops(conv) == 2 * 108 * 25 + 100
    dense = keras.layers.Dense(7)
    dense(keras.Input((10,)))
    assert costs.flops(dense) == 2 * 70 + 7
    assert costs.params(dense) == 77


class LazyBlock(keras.layers.Layer):
    """Makes its sublayers in __init__ and has no build(), as keras.io's
    TransformerBlock: their variables appear on the block's first call."""

    def __init__(self, width):
        super().__init__()
        self.inner = keras.layers.Dense(width, activation="relu")
        self.outer = keras.layers.Dense(width)

    def call(self, inputs):
        return self.outer(self.inner(inputs))


def lazy_model(sequential: bool):
    layers = [keras.layers.Dense(8, name="first"), LazyBlock(8), keras.layers.Dense(3, name="head")]
    if sequential:
        return keras.Sequential([keras.Input((12,)), *layers])
    inputs = keras.Input((12,))
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize("sequential", [False, True], ids=["functional", "sequential"])
def test_lazily_built_layers_get_their_variables_on_their_stage_device(sequential):
    model = compile_model(lazy_model(sequential))
    trained = ModelSplit(["cpu:2", "cpu:3"], balance=[1, 2]).recreate(model)
    devices = {v.path: tf.DeviceSpec.from_string(v.value.device).device_index for v in trained.weights}
    assert len(devices) == len(model.weights) == 8
    assert {d for path, d in devices.items() if not path.startswith("first")} == {3}, devices
    assert {d for path, d in devices.items() if path.startswith("first")} == {2}


def test_a_variable_off_its_stage_device_is_an_error():
    model = compile_model(tfpar.models.mlp(12, 3, hidden=(8,)))
    graph = placement.build_stages(model, ["/device:CPU:1", "/device:CPU:2"], [1, 1])
    # model was built outside any device scope: its variables sit on CPU:0.
    with pytest.raises(ValueError, match=r"must live on its stage's device.*dense_0/kernel on .*CPU:0"):
        placement.check_devices(graph)


def masked_text_model():
    inputs = keras.Input((5,), dtype="int32")
    x = keras.layers.Embedding(20, 4, mask_zero=True, name="embed")(inputs)
    x = keras.layers.LSTM(4, name="lstm")(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(x))


def test_the_mask_op_of_mask_zero_is_no_layer_and_runs_with_its_reader():
    model = compile_model(masked_text_model())
    ops = placement.operations(model)
    assert [type(op).__name__ for op in ops if not isinstance(op, keras.layers.Layer)] == ["NotEqual"]
    assert [layer.name for layer in placement.layers(model)] == ["embed", "lstm", "head"]
    table = tfpar.describe_placement(model, ModelSplit(2, balance=[1, 2]), show=False)
    assert [row[3] for row in table.rows] == [1, 2]
    # The mask feeds the LSTM: it is computed in the LSTM's stage.
    stages = dict(zip([op.name for op in ops], placement.op_stages(placement.uses(model), [1, 2])))
    mask = next(op.name for op in ops if type(op).__name__ == "NotEqual")
    assert stages == {"embed": 0, mask: 1, "lstm": 1, "head": 1}
