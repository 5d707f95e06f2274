"""Lookup layers (TextVectorization, StringLookup, IntegerLookup) train and
evaluate under every strategy exactly like one device.

Their adapted vocabulary is in neither their config nor their weights: a
twin rebuilt from the config must be given it (`replica.copy_assets`), and
string inputs must cut into micro-batches and cross stage boundaries like
any tensor, with no gradient asked of them. Two models written the way
keras.io writes them: the end-to-end text classifier (a string per sample
-> TextVectorization -> Embedding -> average -> softmax), and a table of
features (a numeric vector, a string category through StringLookup, an
integer code through IntegerLookup) whose lookups sit late in the model, so
that the string and integer inputs are carried across stage boundaries.
Each trains 2 epochs from the same weights and data order as one-device
`model.fit`; 125 samples in batches of 32 leave a last batch of 29, which
two replicas and two micro-batches cut unevenly (and pad).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpar.pipeline import placement
from tfpar.strategies import DataParallel, GPipe, ModelSplit
import tfpar

from conftest import ADAM_ATOL, assert_same_weights, weights_of

SAMPLES, BATCH, CLASSES = 125, 32, 3
WORDS = "the cat sat on a mat dog ran far away big small red blue green sky".split()
COLOURS = ["red", "green", "blue", "cyan", "black"]

STRATEGIES = {
    "data_parallel": lambda: DataParallel(2),
    "data_parallel_micro": lambda: DataParallel(2, microbatches=2),
    "split": lambda: ModelSplit(2),
    # gpipe runs 1f1b's very tasks in another order (see the catalogue).
    "1f1b_remat": lambda: GPipe(2, microbatches=2, schedule="1f1b", rematerialize=True),
    "zb1": lambda: GPipe(2, microbatches=2, schedule="zb1"),
    "hybrid": lambda: GPipe(4, microbatches=2, data_parallel=2),
}


def texts_and_labels():
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(2, 9))) for _ in range(SAMPLES)]
    return np.array(texts)[:, None], rng.integers(0, CLASSES, size=SAMPLES).astype("int32")


def text_classifier(texts) -> keras.Model:
    """keras.io's end-to-end text classification, shrunk."""
    keras.utils.set_random_seed(0)
    vectorize = keras.layers.TextVectorization(max_tokens=16, output_sequence_length=6)
    vectorize.adapt(texts[:, 0])
    inputs = keras.Input(shape=(1,), dtype="string")
    hidden = keras.layers.Embedding(16, 4)(vectorize(inputs))
    hidden = keras.layers.GlobalAveragePooling1D()(hidden)
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def features_and_labels():
    rng = np.random.default_rng(1)
    x = {
        "numbers": rng.normal(size=(SAMPLES, 4)).astype("float32"),
        "colour": rng.choice(COLOURS, size=(SAMPLES, 1)),
        "code": rng.choice([3, 17, 42, 99], size=(SAMPLES, 1)).astype("int64"),
    }
    return x, rng.integers(0, CLASSES, size=SAMPLES).astype("int32")


def feature_model(x) -> keras.Model:
    """Structured data: a dense branch, and two categorical features looked
    up (StringLookup, IntegerLookup) and embedded."""
    keras.utils.set_random_seed(0)
    colour = keras.layers.StringLookup(name="colour_lookup")
    colour.adapt(x["colour"])
    code = keras.layers.IntegerLookup(name="code_lookup")
    code.adapt(x["code"])
    inputs = {"numbers": keras.Input((4,), name="numbers"),
              "colour": keras.Input((1,), dtype="string", name="colour"),
              "code": keras.Input((1,), dtype="int64", name="code")}
    dense = inputs["numbers"]
    for index in range(4):  # deeper than the lookups' branches: placed first
        dense = keras.layers.Dense(8, activation="relu", name=f"d{index}")(dense)
    colours = keras.layers.Flatten(name="f1")(
        keras.layers.Embedding(colour.vocabulary_size(), 3, name="e1")(colour(inputs["colour"])))
    codes = keras.layers.Flatten(name="f2")(
        keras.layers.Embedding(code.vocabulary_size(), 3, name="e2")(code(inputs["code"])))
    joined = keras.layers.Concatenate(name="join")([dense, colours, codes])
    outputs = keras.layers.Dense(CLASSES, activation="softmax", name="head")(joined)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


CASES = {
    "text": (texts_and_labels, text_classifier, 1e-6),
    "features": (features_and_labels, feature_model, ADAM_ATOL),
}


def dataset(x, y):
    # Keras' array adapter takes no string arrays: string features come as
    # tf.data, as on keras.io.
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)


def travel(weights, start) -> float:
    return max(float(np.max(np.abs(w - s))) for w, s in zip(weights, start))


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("case", list(CASES))
def test_lookup_models_train_like_one_device(case, strategy):
    make_data, build, atol = CASES[case]
    x, y = make_data()
    reference = build(x)
    start = weights_of(reference)
    expected = reference.fit(dataset(x, y), epochs=2, shuffle=False, verbose=0).history
    model = build(x)
    history = tfpar.fit_distributed(model, dataset(x, y), epochs=2, shuffle=False, verbose=0,
                                    strategy=STRATEGIES[strategy]()).history
    assert_same_weights(weights_of(model), weights_of(reference), atol=atol)
    moved = travel(weights_of(reference), start)
    assert moved > 1e-2
    assert travel(weights_of(model), start) == pytest.approx(moved, rel=1e-2)
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-4)
    # The caller's model, with its own vocabulary, evaluates as one device's.
    np.testing.assert_allclose(model.evaluate(dataset(x, y), verbose=0),
                               reference.evaluate(dataset(x, y), verbose=0), rtol=1e-4)


def test_string_and_integer_inputs_cross_stage_boundaries():
    # The lookups come after the dense branch in the layers' order: under 2
    # and 4 stages the raw string and integer inputs are carried from the
    # first stage to a later one (what the strategies above train).
    x, _ = features_and_labels()
    model = feature_model(x)
    names = [op.name for op in placement.layers(model)]
    for stages in (2, 4):
        sizes = placement.stage_sizes(model, stages, "flops")
        stage = dict(zip(names, [s for s, n in enumerate(sizes) for _ in range(n)]))
        assert stage["d0"] == 0 and stage["colour_lookup"] > 0 and stage["code_lookup"] > 0, stage


def test_the_twin_of_an_adapted_lookup_has_its_vocabulary():
    from tfpar.core import replica

    texts, _ = texts_and_labels()
    model = text_classifier(texts)
    twin = replica.clone(model)
    vectorize, twin_vectorize = model.layers[1], twin.layers[1]
    assert twin_vectorize is not vectorize
    assert twin_vectorize.get_vocabulary() == vectorize.get_vocabulary()
    np.testing.assert_array_equal(twin_vectorize(texts[:4]), vectorize(texts[:4]))
