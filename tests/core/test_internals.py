"""tfpar's reaches into private Keras and TensorFlow attributes still work.

`tfpar/core/internals.py` is the only module that touches them; each test here
checks one accessor on the installed versions and fails with a message that
names them and the versions tfpar was checked on, so an upgrade that moves
an attribute says what broke instead of changing training silently.
"""

import keras
import numpy as np
import tensorflow as tf

from tfpar.core import internals
from tfpar.strategies import DataParallel

from conftest import build_mlp, compile_model, make_data

VERSIONS = (f"Keras {keras.__version__} / TensorFlow {tf.__version__} "
            f"(tfpar/core/internals.py was checked on {internals.CHECKED_ON})")


def holds(condition, what: str) -> None:
    assert condition, f"{what} no longer holds on {VERSIONS}: update tfpar/core/internals.py"


def test_compile_config_and_home_strategy():
    model = build_mlp()
    holds(internals.compile_config(model) == {}, "compile_config of an uncompiled model")
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    holds(internals.compile_config(model).get("loss") == "mse", "compile_config")
    holds(internals.home_strategy(model) is None, "home_strategy outside a scope")
    strategy = DataParallel(2)
    with strategy.scope():
        inside = build_mlp()
    holds(internals.home_strategy(inside) is strategy, "home_strategy inside a scope")


def test_loss_tracker_compute_loss_and_training_argument():
    model = compile_model(build_mlp())
    x, y = make_data(32)
    history = model.fit(x, y, batch_size=32, verbose=0)
    tracker = internals.loss_tracker(model)
    holds(isinstance(tracker, keras.metrics.Mean), "loss_tracker is a Mean")
    holds(np.isclose(float(tracker.result()), history.history["loss"][-1]), "loss_tracker feeds History")
    y_pred = model(x)
    holds(np.isclose(float(internals.compute_loss(model, x=x, y=y, y_pred=y_pred, training=False)),
                     float(model.compute_loss(x=x, y=y, y_pred=y_pred))), "compute_loss")
    holds(internals.call_has_training_arg(model) is True, "call_has_training_arg")


def test_symbolic_build_and_its_hook():
    model = compile_model(build_mlp())
    x, y = make_data(32)
    internals.symbolic_build(model, (x[:1], y[:1], None))
    holds(model._compile_metrics.built, "symbolic_build builds the compiled metrics")  # noqa: SLF001
    calls = []

    def build(iterator=None, data_batch=None):
        calls.append(internals.first_batch(iterator, data_batch))
        internals.symbolic_build(model, (x[:1], y[:1], None))

    # As PipelineModel and replica_model do: a subclass defines the hook.
    own = type(model)
    model.__class__ = type(own.__name__, (own,), {
        internals.SYMBOLIC_BUILD_HOOK: lambda self, iterator=None, data_batch=None: build(iterator, data_batch)})
    try:
        model.fit(x, y, batch_size=32, verbose=0, shuffle=False)
    finally:
        model.__class__ = own
    holds(len(calls) == 1 and calls[0] is not None, f"fit calls {internals.SYMBOLIC_BUILD_HOOK}(iterator=...)")
    holds(np.array_equal(calls[0][0], x[:32]), "the epoch iterator yields (_, _, batches), batch 0 first")


def test_functional_graph_accessors():
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    shared = keras.layers.Dense(2, name="shared")
    outputs = {"p": shared(keras.layers.Dense(2)(a)), "q": shared(b)}
    model = keras.Model({"a": a, "b": b}, outputs)
    holds(internals.is_functional(model) and not internals.is_functional(keras.Model()),
          "is_functional")
    flat = internals.standardize_inputs(model, {"b": np.ones((1, 2)), "a": np.zeros((1, 3))})
    holds([tuple(t.shape) for t in flat] == [(1, 3), (1, 2)], "standardize_inputs orders inputs")
    holds(set(internals.output_structure(model)) == {"p", "q"}, "output_structure")
    holds(internals.inbound_node_count(shared) == 2, "inbound_node_count of a shared layer")
    nodes = [n for n in internals.graph_nodes(model) if n.operation is shared]
    holds(len(nodes) == 2 and {id(n.outputs[0]) for n in nodes} == {id(t) for t in outputs.values()}
          and id(b) in {id(t) for n in nodes for t in n.input_tensors},
          "graph_nodes: each call of a shared layer")
    outer = keras.Model({"a": a, "b": b}, shared(model({"a": a, "b": b})["p"]))
    holds(sum(n.operation is shared for n in internals.graph_nodes(outer)) == 1,
          "graph_nodes: a nested model's calls are its own")


def test_lambda_output_shape():
    holds(internals.lambda_output_shape(keras.layers.Lambda(lambda t: t, output_shape=(3,))) == (3,),
          "lambda_output_shape")


def test_added_losses_and_keras_logits():
    class AddsLoss(keras.layers.Layer):
        def call(self, inputs):
            self.add_loss(keras.ops.mean(inputs))
            return inputs

    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(3, kernel_regularizer="l2")(AddsLoss()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden))
    model(np.ones((2, 3), "float32"))
    holds(len(internals.added_losses(model)) == 1, "added_losses (add_loss, without regularizers)")

    @tf.function
    def logits_kept(x):
        out = model(x)
        holds(internals.keras_logits(out) is not None, "keras_logits of a softmax output")
        holds(internals.keras_logits(tf.nn.relu(x)) is None, "keras_logits of a plain tensor")
        return out

    logits_kept(np.ones((2, 3), "float32"))


def test_mirrored_strategy_accessors():
    strategy = DataParallel(2, bytes_per_pack=1024, compression="bf16")
    holds(internals.communication_options(strategy.extended).bytes_per_pack == 1024,
          "communication_options")
    keys = strategy.extended._collective_keys  # noqa: SLF001  (what the key base sets)
    holds(keys._group_key > 100_000, "set_collective_key_base")  # noqa: SLF001
    holds(float(internals.unscale_loss_for_distribution(tf.constant(3.0))) == 3.0,
          "unscale_loss_for_distribution outside a strategy")


def test_the_optimizer_methods_summed_updates_override():
    # internals._SummedUpdates moves Keras' clip after the replicas' sum and
    # its accumulation cond to cross-replica context: the steps of
    # BaseOptimizer._backend_apply_gradients and TFOptimizer it relies on.
    import inspect

    from keras.src.backend.tensorflow.optimizer import TFOptimizer
    from keras.src.optimizers.base_optimizer import BaseOptimizer

    apply_source = inspect.getsource(BaseOptimizer._backend_apply_gradients)
    holds(apply_source.index("_clip_gradients") < apply_source.index("_backend_update_step"),
          "Keras clips before its update step")
    update_source = inspect.getsource(TFOptimizer._backend_update_step)
    holds("_all_reduce_sum_gradients" in update_source and "_distributed_tf_update_step" in update_source,
          "TFOptimizer's update step all-reduces, then updates in a merge_call")
    for name in ("_clip_gradients", "_all_reduce_sum_gradients", "_distributed_tf_update_step",
                 "_apply_weight_decay", "_backend_increment_gradient_accumulators",
                 "_update_model_variables_moving_average", "_get_variable_index", "_var_key",
                 "_overwrite_model_variables_with_average_value"):
        holds(callable(getattr(TFOptimizer, name, None)), name)
    optimizer = keras.optimizers.SGD(0.1, gradient_accumulation_steps=2)
    optimizer.build([keras.Variable(np.zeros(3, "float32"))])
    holds(len(optimizer._accumulated_gradients) == 1 and optimizer._iterations is not None,  # noqa: SLF001
          "accumulators and the raw iteration count")
    holds(optimizer._distribution_strategy is not None, "the optimizer's strategy")  # noqa: SLF001


def test_optimizer_slots_are_named_after_their_weights():
    # replica._slot_keys reads which weight a slot belongs to from its path
    # (Keras' add_variable_from_reference names it after the weight), and
    # internals.optimized_variables lists the weights a built optimizer updates.
    import re

    for make in (keras.optimizers.Adam, lambda: keras.optimizers.SGD(momentum=0.9), keras.optimizers.RMSprop,
                 lambda: keras.optimizers.AdamW(gradient_accumulation_steps=2, use_ema=True),
                 keras.optimizers.Adafactor):
        optimizer = make()
        weights = [keras.Variable(np.zeros((1, 1)), name=f"tfpar_probe_{j}_") for j in range(2)]
        optimizer.build(weights)
        holds(internals.optimized_variables(optimizer) == weights, "optimized_variables")
        owners = [re.search(r"tfpar_probe_(\d+)_", v.path) for v in optimizer.variables]
        slots = [int(o.group(1)) for o in owners if o]
        holds(sorted(set(slots)) == [0, 1] and slots.count(0) == slots.count(1),
              f"{type(optimizer).__name__}'s slots are named after their weights")


def private_reaches(package) -> list[str]:
    """`obj._name` and getattr(obj, "_name") outside internals.py where no
    tfpar module defines `_name`: reaches into Keras or TensorFlow."""
    import ast
    import pathlib

    trees = {p: ast.parse(p.read_text()) for p in pathlib.Path(package).rglob("*.py")}
    own = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                own.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
    found = []
    for path, tree in sorted(trees.items()):
        if path.name == "internals.py":
            continue
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr", "setattr")
                  and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)):
                name = node.args[1].value
            if (isinstance(name, str) and name.startswith("_") and not name.startswith("__")
                    and name not in own):
                found.append(f"{path.name}:{node.lineno} {name}")
    return found


def test_no_module_but_internals_reaches_into_keras_or_tensorflow():
    import pathlib

    package = pathlib.Path(internals.__file__).parent
    assert private_reaches(package) == [], "route these through tfpar/core/internals.py"


def test_the_reach_check_sees_a_private_access(tmp_path):
    (tmp_path / "m.py").write_text("import keras\n\ndef f(model):\n    return model._compile_config, getattr(model, '_layers')\n")
    assert private_reaches(tmp_path) == ["m.py:4 _compile_config", "m.py:4 _layers"]


def test_array_adapter_accessors():
    x, y = np.arange(10, dtype="float32")[:, None], np.array([0, 1] * 5)
    adapter = internals.array_batches(x, y, batch_size=4, class_weight={0: 1.0, 1: 3.0})
    holds(adapter.num_batches == 3 and internals.array_count(adapter) == 10, "ArrayDataAdapter counts")
    packed = internals.array_inputs(adapter)
    holds(len(packed) == 3 and [len(t) for t in packed] == [10] * 3, "ArrayDataAdapter's packed inputs")
    holds(np.asarray(packed[2]).tolist() == [1.0, 3.0] * 5, "class weights as sample weights")
    first = next(iter(adapter.get_tf_dataset()))
    holds(first[0].numpy()[:, 0].tolist() == [0, 1, 2, 3], "ArrayDataAdapter's tf.data batches")


def test_sublayers_walks_a_layer_and_the_layers_inside_it():
    # replica.copy_assets pairs a layer's and its twin's layers with assets
    # (a TextVectorization's vocabulary lives in the StringLookup inside it).
    vectorize = keras.layers.TextVectorization(max_tokens=8)
    found = internals.sublayers(vectorize)
    holds([type(layer).__name__ for layer in found] == ["TextVectorization", "StringLookup"],
          "sublayers (Layer._flatten_layers)")
    holds(internals.sublayers(keras.layers.Dense(2))[0].__class__ is keras.layers.Dense,
          "sublayers includes the layer itself")


def test_input_batch_takes_the_structure_the_model_is_called_with():
    inputs = {"ids": keras.Input((3,), dtype="int32", name="ids"), "mask": keras.Input((3,), name="mask")}
    model = keras.Model(inputs, keras.layers.Add()([keras.ops.cast(inputs["ids"], "float32"), inputs["mask"]]))
    batch = internals.input_batch(model, lambda t: np.zeros((2, 3), t.dtype))
    holds(sorted(batch) == ["ids", "mask"] and model(batch).shape == (2, 3), "input_batch (_inputs_struct)")
    sequential = keras.Sequential([keras.layers.Dense(2)])
    sequential.build((None, 4))
    holds(internals.input_batch(sequential, lambda t: np.zeros((1, 4), "float32")).shape == (1, 4),
          "input_batch of a Sequential built without a call")


def test_node_counts_forget_calls_and_refresh_variable_keys():
    layer = keras.layers.Dense(2)
    layer(keras.Input((3,)))
    counts = internals.node_counts(layer)
    holds(counts == (1, 0), "node_counts (_inbound_nodes, _outbound_nodes)")
    layer(keras.Input((3,)))
    internals.forget_calls_after(layer, counts)
    holds(internals.node_counts(layer) == counts, "forget_calls_after")
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(layer.trainable_variables)
    for variable in layer.trainable_variables:
        internals.recreate_variable(variable)
    internals.refresh_variable_keys(optimizer)
    optimizer.apply_gradients([(np.ones(v.shape, "float32"), v) for v in layer.trainable_variables])
    holds(int(optimizer.iterations.numpy()) == 1,
          "refresh_variable_keys (_trainable_variables_indices, _var_key)")


def test_serialized_as():
    @keras.saving.register_keras_serializable(package="tfpar_internals")
    class Mine(keras.layers.Layer):
        pass

    made = type(Mine.__name__, (Mine,), {"__module__": Mine.__module__})
    with internals.serialized_as(made, Mine):
        holds(keras.saving.get_registered_name(made) == "tfpar_internals>Mine",
              "serialized_as: Keras reads registered names by class object")
    holds(keras.saving.get_registered_name(made) == "Mine", "serialized_as forgets the subclass")
    holds(keras.saving.get_registered_name(Mine) == "tfpar_internals>Mine", "the class keeps its name")
