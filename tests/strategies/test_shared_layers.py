"""Shared and tied layers train under ModelSplit, GPipe and the hybrid
exactly like one device.

A layer called twice (shared) runs each call in the stage where the graph
needs it; the stage of its first use holds its weights, later stages read
them, and its gradient is the sum of every use's. Three models: token ids
through an embedding whose table also projects the output (tied, as every
keras_hub causal LM does), a Dense applied at two depths, and keras_hub's
GPT2CausalLM itself. Each trains 8 steps from the same weights and data
order as single-device `model.fit`; weights must agree to float32 round-off
(conftest.assert_same_weights; ADAM_ATOL under Adam).
"""

import functools

import keras
import numpy as np
import pytest

from tfpar.strategies import GPipe, ModelSplit
import tfpar

from conftest import ADAM_ATOL, assert_same_weights, weights_of

VOCAB, LENGTH, SAMPLES = 20, 8, 32
FIT = dict(batch_size=8, epochs=2, shuffle=False, verbose=0)  # 8 steps


class TiedEmbedding(keras.layers.Layer):
    """A token table that looks ids up, or projects vectors onto the
    vocabulary with its transpose (`reverse=True`)."""

    def __init__(self, vocabulary: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary, self.width = vocabulary, width

    def build(self, input_shape):
        self.table = self.add_weight(shape=(self.vocabulary, self.width), name="table")

    def call(self, inputs, reverse=False):
        if reverse:
            return keras.ops.matmul(inputs, keras.ops.transpose(self.table))
        return keras.ops.take(self.table, inputs, axis=0)

    def get_config(self):
        return {**super().get_config(), "vocabulary": self.vocabulary, "width": self.width}


def tied_model():
    ids = keras.Input((LENGTH,), dtype="int32", name="ids")
    embedding = TiedEmbedding(VOCAB, 6, name="tied")
    h = keras.layers.Dense(6, activation="tanh", name="mid1")(embedding(ids))
    h = keras.layers.Dense(6, name="mid2")(h)
    return keras.Model(ids, embedding(h, reverse=True), name="tied_lm")


def twice_dense_model():
    inputs = keras.Input((6,))
    shared = keras.layers.Dense(6, activation="tanh", name="shared")
    h = shared(keras.layers.Dense(6, name="first")(inputs))
    h = shared(keras.layers.Dense(6, activation="relu", name="mid")(h))
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(h), name="twice")


def data(name):
    rng = np.random.default_rng(5)
    if name == "tied":
        ids = rng.integers(0, VOCAB, (SAMPLES, LENGTH + 1)).astype("int32")
        return ids[:, :-1], ids[:, 1:]
    return rng.normal(size=(SAMPLES, 6)).astype("float32"), rng.integers(0, 3, SAMPLES).astype("int32")


MODELS = {"tied": tied_model, "twice": twice_dense_model}


def build(name):
    keras.utils.set_random_seed(3)
    model = MODELS[name]()
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@functools.lru_cache(maxsize=None)
def reference(name):
    model = build(name)
    before = weights_of(model)
    history = model.fit(*data(name), **FIT)
    return before, weights_of(model), history.history["loss"]


# Layers in order: tied .. mid1 | mid2 .. tied; first, shared | mid, shared, head.
BALANCE = {"tied": [2, 2], "twice": [2, 3]}
STRATEGIES = {
    "split": lambda b: ModelSplit(2, balance=b),
    "gpipe-M2": lambda b: GPipe(2, microbatches=2, balance=b),
    "1f1b-M2-remat": lambda b: GPipe(2, microbatches=2, schedule="1f1b", rematerialize=True, balance=b),
    "zb1-M2": lambda b: GPipe(2, microbatches=2, schedule="zb1", balance=b),
    "hybrid-zb1": lambda b: GPipe(4, microbatches=2, data_parallel=2, schedule="zb1", balance=b),
}
CASES = [("tied", s) for s in STRATEGIES] + [("twice", "split"), ("twice", "1f1b-M2-remat")]


@pytest.mark.parametrize("name, kind", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_a_shared_layer_trains_exactly_like_one_device(name, kind):
    model = build(name)
    strategy = STRATEGIES[kind](BALANCE[name])
    history = tfpar.fit_distributed(model, *data(name), strategy=strategy, **FIT)
    before, expected, losses = reference(name)
    assert_same_weights(weights_of(model), expected)
    np.testing.assert_allclose(history.history["loss"], losses, rtol=1e-5)
    # Every weight moved, the shared one too, and as far as on one device:
    # its gradient from the later stage's use alone moves it well beyond
    # the tolerance (a lost use's gradient fails here).
    shared = [i for i, w in enumerate(model.weights) if w.path.startswith(("tied/", "shared/"))]
    for i in shared:
        assert np.abs(expected[i] - before[i]).max() > 1e-3
        np.testing.assert_allclose(np.abs(weights_of(model)[i] - before[i]).max(),
                                   np.abs(expected[i] - before[i]).max(), rtol=1e-3)


def test_each_use_runs_in_its_stage_and_the_first_holds_the_weight():
    model = build("tied")
    trained = ModelSplit(["cpu:2", "cpu:3"], balance=BALANCE["tied"]).recreate(model)
    first, second = trained.plan.graph.stages
    assert first.layer_names == ["tied", "mid1"] and second.layer_names == ["mid2", "tied"]
    table = next(v for v in trained.twin.weights if v.path == "tied/table")
    assert table.value.device.endswith("CPU:2")
    assert [v.path for v in second.reads] == ["tied/table"] and first.reads == []
    assert "tied/table" in [v.path for v in second.model.trainable_variables]
    assert "tied/table" not in [v.path for v in second.owned_variables]
    assert len(trained.twin.weights) == len(model.weights)


def test_describe_placement_shows_where_a_shared_weight_lives_and_who_uses_it():
    model = build("twice")
    table = tfpar.describe_placement(model, GPipe(2, balance=BALANCE["twice"]), show=False)
    assert table.shared == [("shared/kernel", 0, [0, 1]), ("shared/bias", 0, [0, 1])]
    # Its weights count once, in the stage that holds them.
    assert [row[4] for row in table.rows] == [f"{6 * 6 + 6 + 6 * 6 + 6}", f"{6 * 6 + 6 + 6 * 3 + 3}"]
    assert "shared/kernel: held by stage 0, used by stages 0, 1" in str(table)
    plain = tfpar.describe_placement(tfpar.models.mlp(12, 3), GPipe(2), show=False)
    assert plain.shared == [] and "Shared" not in str(plain)


# --- keras_hub GPT2CausalLM: the output projection is the token embedding ---

HUB_VOCAB = 64


def gpt2_causal_lm():
    import keras_hub

    keras.utils.set_random_seed(3)
    # No dropout: masks are drawn per stage and micro-batch (documented to
    # differ from one device), and the contract here is exactness.
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=HUB_VOCAB, num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64,
        max_sequence_length=16, dropout=0.0)
    model = keras_hub.models.GPT2CausalLM(backbone, preprocessor=None)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def next_tokens():
    ids = np.random.default_rng(5).integers(1, HUB_VOCAB, (SAMPLES, LENGTH + 1)).astype("int32")
    return {"token_ids": ids[:, :-1], "padding_mask": np.ones((SAMPLES, LENGTH), "int32")}, ids[:, 1:]


@functools.lru_cache(maxsize=None)
def gpt2_reference():
    model = gpt2_causal_lm()
    before = weights_of(model)
    model.fit(*next_tokens(), **FIT)
    return before, weights_of(model)


# The conformance catalogue trains GPT2CausalLM under its columns (split,
# 1f1b + remat, the zb1 hybrid, data parallel); here the one schedule it
# leaves out, zb1 with remat, and where the tied weight lives.
HUB_STRATEGIES = {
    "zb1-M2-remat": lambda: GPipe(2, microbatches=2, schedule="zb1", rematerialize=True),
}


@pytest.mark.parametrize("kind", HUB_STRATEGIES)
def test_gpt2_causal_lm_with_tied_embeddings_trains_exactly_like_one_device(kind):
    model = gpt2_causal_lm()
    table = tfpar.describe_placement(model, HUB_STRATEGIES[kind](), show=False)
    assert table.shared == [("token_embedding/embeddings", 0, [0, 1])]
    tfpar.fit_distributed(model, *next_tokens(), strategy=HUB_STRATEGIES[kind](), **FIT)
    before, expected = gpt2_reference()
    assert_same_weights(weights_of(model), expected, atol=ADAM_ATOL)
    embedding = [w.path for w in model.weights].index("token_embedding/embeddings")
    moved = np.abs(expected[embedding] - before[embedding]).max()
    assert moved > 1e-3
    np.testing.assert_allclose(np.abs(weights_of(model)[embedding] - before[embedding]).max(),
                               moved, rtol=1e-3)


def test_a_weight_read_behind_its_layers_back_is_refused_not_dropped():
    # A stage that reads a model weight none of its layers tracks could not
    # give it that use's gradient: the first trace of the step refuses.
    import tensorflow as tf

    from tfpar.pipeline import placement, step

    model = build("tied")
    graph = placement.build_stages(model, ["/device:CPU:0", "/device:CPU:1"], BALANCE["tied"])
    second = graph.stages[1]
    own = [v for v in second.model.trainable_variables if v.path != "tied/table"]
    with tf.GradientTape() as tape:
        second.model([tf.ones((1, LENGTH, 6))])
    step._check_weights_known(second, tape, second.model.trainable_variables, model.trainable_variables)
    with pytest.raises(ValueError, match=r"must belong to one of its layers.*stage 1 .*\['tied/table'\]"):
        step._check_weights_known(second, tape, own, model.trainable_variables)


def test_a_checkpoint_written_during_a_pipelined_fit_loads_as_the_callers_task(tmp_path):
    # ModelCheckpoint saves `self.model`, the pipeline: it writes the
    # caller's GPT2CausalLM holding the pipeline's state (its twin is a
    # functional copy, which does not load as the task), and leaves the
    # caller's model as it was until training ends.
    path = tmp_path / "during.keras"
    model = gpt2_causal_lm()
    tfpar.fit_distributed(model, *next_tokens(), strategy=GPipe(2, microbatches=2),
                          callbacks=[keras.callbacks.ModelCheckpoint(str(path))], **FIT)
    restored = keras.models.load_model(path)
    assert type(restored) is type(model)
    assert_same_weights(weights_of(restored), weights_of(model), rtol=0, atol=0)

    class Fails(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):  # after the checkpoint of epoch 0
            raise RuntimeError("stop")

    model = gpt2_causal_lm()
    before = weights_of(model)
    with pytest.raises(RuntimeError, match="stop"):
        tfpar.fit_distributed(model, *next_tokens(), strategy=GPipe(2, microbatches=2),
                              callbacks=[keras.callbacks.ModelCheckpoint(str(path)), Fails()], **FIT)
    assert_same_weights(weights_of(model), before, rtol=0, atol=0)
    assert int(model.optimizer.iterations) == 0
    moved = keras.models.load_model(path)
    assert max(np.abs(a - b).max() for a, b in zip(weights_of(moved), before)) > 1e-4
