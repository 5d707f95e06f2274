"""The Transformer encoder-decoder: shapes, causality, its natural split, and
exact training under every in-process strategy (multi-worker is covered in
tests/strategies/test_multi_worker.py)."""

import keras
import numpy as np
import pytest

from tfpar.pipeline import placement
from tfpar.strategies import DataParallel, GPipe, ModelSplit
import tfpar

from conftest import assert_same_weights, weights_of

VOCAB, LENGTH = 7, 4


def build():
    keras.utils.set_random_seed(4)
    model = tfpar.models.transformer(VOCAB, LENGTH, LENGTH, width=8, heads=2, feed_forward=16,
                                     encoder_blocks=1, decoder_blocks=1)
    # SGD, not Adam: some of the Transformer's gradients are zero in exact
    # arithmetic (a softmax ignores a shift shared by all its logits, so the
    # attention key bias gets none), and Adam's g / (|g| + eps) turns their
    # float32 round-off, which any other summation order changes, into
    # steps of size lr. SGD keeps round-off at round-off.
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def data():
    (x, y), _ = tfpar.datasets.reversal(samples=40, length=LENGTH, vocab_size=VOCAB, test_fraction=0.2)
    return x, y  # 32 training sequences


def test_shapes_and_causal_decoder():
    model = build()
    x, _ = data()
    assert model.output_shape == (None, LENGTH, VOCAB)
    logits = model.predict(x, verbose=0)
    changed = [x[0].copy(), x[1].copy()]
    changed[1][:, -1] = (changed[1][:, -1] + 1) % VOCAB  # alter the last target token
    after = model.predict(changed, verbose=0)
    np.testing.assert_allclose(after[:, :-1], logits[:, :-1], rtol=1e-5, atol=1e-6)
    assert np.abs(after[:, -1] - logits[:, -1]).max() > 1e-4


def test_natural_split_puts_encoder_and_decoder_on_different_stages():
    model = build()
    sizes = tfpar.models.encoder_decoder_balance(model)
    names = [op.name for op in placement.operations(model)]
    encoder, decoder = names[: sizes[0]], names[sizes[0]:]
    assert all(n.startswith("encoder_") for n in encoder)
    assert all(n.startswith("decoder_") or n == "logits" for n in decoder)
    assert len(encoder) + len(decoder) == len(names)


def test_natural_split_needs_a_transformer():
    with pytest.raises(ValueError, match="needs a model made by tfpar.models.transformer.*Received"):
        tfpar.models.encoder_decoder_balance(tfpar.models.mlp(4, 2))


def test_width_must_divide_into_heads():
    with pytest.raises(ValueError, match="width must be a multiple of heads. Received: width=10, heads=4"):
        tfpar.models.transformer(5, 3, 3, width=10, heads=4)


FIT = dict(batch_size=16, epochs=2, shuffle=False, verbose=0)  # 4 steps


def strategies():
    balance = tfpar.models.encoder_decoder_balance(build())
    return {
        "data-parallel": lambda: DataParallel(2),
        "split": lambda: ModelSplit(2, balance=balance),
        "gpipe-M2": lambda: GPipe(2, microbatches=2, balance=balance),
        "1f1b-M4-remat": lambda: GPipe(2, microbatches=4, schedule="1f1b", balance=balance,
                                       rematerialize=True),
    }


@pytest.mark.parametrize("name", list(strategies()))
def test_trains_exactly_like_one_device(name):
    reference = build()
    expected = reference.fit(*data(), **FIT).history["loss"]
    model = build()
    history = tfpar.fit_distributed(model, *data(), strategy=strategies()[name](), **FIT)
    assert_same_weights(weights_of(model), weights_of(reference))
    np.testing.assert_allclose(history.history["loss"], expected, rtol=1e-5)
