"""The conformance catalogue: Keras programs written the way users write them.

Each idiom is a model built and compiled as the keras.io examples and the
TensorFlow tutorials do (softmax heads with string losses, one-hot labels,
dict outputs, custom layers, regularizers...), with its data and fit
arguments. `test_conformance.py` trains each under every strategy against
one-device `model.fit`; the two-worker job (`multi_worker_conformance.py`)
trains each under MultiWorker. Imported by both, so plain Python: no test
functions here.

`compare` says what "the same training" means for an idiom:
- "exact": weights equal to float32 round-off, and moved as far as on one
  device (see conftest.assert_same_weights; Adam and mixed precision get
  their own stated tolerances).
- "curves": randomness or statistics legitimately differ (dropout masks per
  replica or micro-batch, BatchNormalization statistics per replica or
  micro-batch), so the loss curves must agree within a stated margin and
  the weights must have moved as far, within 2x.
`pipelines` is None when ModelSplit/GPipe train it, else the message with
which they must refuse it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

SAMPLES, EPOCHS = 64, 2  # 8 steps of 16
MAXLEN, VOCAB = 6, 40


@dataclasses.dataclass
class Idiom:
    name: str
    build: Callable[[], keras.Model]  # a compiled model, same weights each call
    data: Callable[[], tuple]  # (x, y, extra fit kwargs)
    compare: str = "exact"
    pipelines: str | None = None  # the refusal a pipeline must give, or None
    atol: float = 1e-6
    batch: int = 16
    # The model's own train_step logs `compute_loss`, which Keras scales by
    # 1/replicas under tf.distribute: its History "loss" is the one-device
    # loss over the replica count (tfpar warns about this).
    loss_per_replica: bool = False
    # Overrides train_step: data parallel with micro-batches must refuse it.
    own_train_step: bool = False
    # Run in the two-worker job too. MultiWorker runs the same replica step
    # as DataParallel (which runs every idiom); the job keeps every idiom
    # with its own data path (inputs, weights, validation, outputs, layers
    # that differ in training) and leaves out those that only add model
    # compute (convolutions, recurrent layers, attention) or another loss
    # form of a path already there: they cost most of its time and test
    # nothing new there.
    multi_worker: bool = True
    # Every row's computation is its own (no mask, no sparse gradient, no
    # batch statistics, no loss form of its own): a micro-batch is only a
    # smaller batch to it, so the micro-batch column, whose mechanics the
    # other idioms cover, leaves it out.
    per_sample: bool = False
    # Keras' gradient_accumulation_steps: ZeRO-2 (shard="gradients") must
    # refuse it (its buffers are the gradient state ZeRO-2 shards).
    accumulates: bool = False

    def fit_kwargs(self, extra: dict) -> dict:
        return {"batch_size": self.batch, "epochs": EPOCHS, "shuffle": False, "verbose": 0, **extra}


def evaluate(model: keras.Model, x, y) -> dict:
    """`model.evaluate` on the training data, by the idioms' batch."""
    batch = None if isinstance(x, tf.data.Dataset) else 16
    return model.evaluate(x, y, batch_size=batch, verbose=0, return_dict=True)


# Adam normalises each step: see conftest.ADAM_ATOL.
ADAM_ATOL = 1e-5
# float16 compute rounds activations and gradients to 11 bits (eps 1e-3);
# a different summation order moves each SGD step by ~lr * 1e-3 * |g|.
MIXED_ATOL = 1e-4


def _rng():
    return np.random.default_rng(7)


def _features(width=8):
    rng = _rng()
    return rng.normal(size=(SAMPLES, width)).astype("float32"), rng


def _labels(rng, classes=3):
    return rng.integers(0, classes, SAMPLES)


def _tokens(rng, pad=True):
    x = rng.integers(1, VOCAB, (SAMPLES, MAXLEN))
    if pad:  # variable-length sequences, zero-padded at the end
        lengths = rng.integers(3, MAXLEN + 1, SAMPLES)
        x = np.where(np.arange(MAXLEN)[None, :] < lengths[:, None], x, 0)
    return x


def _seeded(build):
    def wrapped():
        keras.utils.set_random_seed(11)
        return build()
    return wrapped


# --- classification heads -------------------------------------------------


def softmax_sparse():
    model = keras.Sequential([
        keras.Input(shape=(8,)),
        layers.Dense(16, activation="relu"),
        layers.Dense(16, activation="relu"),
        layers.Dense(3, activation="softmax"),
    ])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def softmax_one_hot():
    inputs = keras.Input(shape=(8,))
    x = layers.Dense(16, activation="relu")(inputs)
    x = layers.Dense(16, activation="relu")(x)
    outputs = layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def one_hot_data():
    x, rng = _features()
    return x, keras.utils.to_categorical(_labels(rng), 3), {}


def softmax_loss_object():
    model = keras.Sequential([
        keras.Input(shape=(8,)),
        layers.Dense(16, activation="relu"),
        layers.Dense(8, activation="relu"),
        layers.Dense(3, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.RMSprop(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy()])
    return model


def sigmoid_binary():
    model = keras.Sequential([
        keras.Input(shape=(8,)),
        layers.Dense(16, activation="relu"),
        layers.Dense(8, activation="relu"),
        layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return model


def binary_data():
    x, rng = _features()
    return x, rng.integers(0, 2, (SAMPLES, 1)).astype("float32"), {}


def sigmoid_multi_label():
    inputs = keras.Input(shape=(8,))
    x = layers.Dense(16, activation="relu")(inputs)
    x = layers.Dense(16, activation="relu")(x)
    outputs = layers.Dense(4, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.BinaryCrossentropy(),
                  metrics=[keras.metrics.BinaryAccuracy(), keras.metrics.AUC()])
    return model


def multi_label_data():
    x, rng = _features()
    return x, rng.integers(0, 2, (SAMPLES, 4)).astype("float32"), {}


# --- regression ----------------------------------------------------------


def regression(loss):
    def build():
        model = keras.Sequential([
            keras.Input(shape=(8,)),
            layers.Dense(16, activation="relu"),
            layers.Dense(8, activation="relu"),
            layers.Dense(1),
        ])
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss, metrics=["mae"])
        return model
    return build


def regression_heads():
    # One head per regression loss of the Keras examples: mse, mae, Huber.
    inputs = keras.Input(shape=(8,))
    x = layers.Dense(16, activation="relu")(inputs)
    x = layers.Dense(8, activation="relu")(x)
    outputs = [layers.Dense(1, name=name)(x) for name in ("mse_head", "mae_head", "huber_head")]
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=["mse", "mae", keras.losses.Huber()],
                  metrics=[["mae"], [], []])
    return model


def regression_heads_data():
    x, y, extra = regression_data()
    return x, [y, y * 0.5, y + 1.0], extra


def regression_data():
    x, rng = _features()
    return x, (x[:, :1] * 2 - x[:, 1:2] + rng.normal(size=(SAMPLES, 1)) * 0.1).astype("float32"), {}


# --- images --------------------------------------------------------------


def conv_net():
    # keras.io mnist_convnet, small and without its Dropout.
    model = keras.Sequential([
        keras.Input(shape=(8, 8, 1)),
        layers.Conv2D(4, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(8, kernel_size=(3, 3), activation="relu", padding="same"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dense(3, activation="softmax"),
    ])
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model


def image_data():
    rng = _rng()
    x = rng.random((SAMPLES, 8, 8, 1)).astype("float32")
    return x, keras.utils.to_categorical(_labels(rng), 3), {}


# --- text ----------------------------------------------------------------


def embedding_lstm_masked():
    inputs = keras.Input(shape=(None,), dtype="int32")
    x = layers.Embedding(VOCAB, 8, mask_zero=True)(inputs)
    x = layers.LSTM(8)(x)
    outputs = layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def embedding_gru():
    model = keras.Sequential([
        keras.Input(shape=(MAXLEN,), dtype="int32"),
        layers.Embedding(VOCAB, 8),
        layers.GRU(8),
        layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy", metrics=["accuracy"])
    return model


def bidirectional_lstm():
    # keras.io bidirectional_lstm_imdb, small.
    inputs = keras.Input(shape=(None,), dtype="int32")
    x = layers.Embedding(VOCAB, 8)(inputs)
    x = layers.Bidirectional(layers.LSTM(8, return_sequences=True))(x)
    x = layers.Bidirectional(layers.LSTM(8))(x)
    outputs = layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy", metrics=["accuracy"])
    return model


def text_data(binary=False):
    def data():
        rng = _rng()
        x = _tokens(rng)
        y = rng.integers(0, 2, (SAMPLES, 1)).astype("float32") if binary else _labels(rng)
        return x, y, {}
    return data


# keras.io text_classification_with_transformer, verbatim (its layers take
# no **kwargs and create their sublayers in __init__, with no build()).
class TransformerBlock(layers.Layer):
    def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1):
        super().__init__()
        self.att = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.ffn = keras.Sequential(
            [layers.Dense(ff_dim, activation="relu"), layers.Dense(embed_dim)]
        )
        self.layernorm1 = layers.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = layers.LayerNormalization(epsilon=1e-6)
        self.dropout1 = layers.Dropout(rate)
        self.dropout2 = layers.Dropout(rate)

    def call(self, inputs):
        attn_output = self.att(inputs, inputs)
        attn_output = self.dropout1(attn_output)
        out1 = self.layernorm1(inputs + attn_output)
        ffn_output = self.ffn(out1)
        ffn_output = self.dropout2(ffn_output)
        return self.layernorm2(out1 + ffn_output)


class TokenAndPositionEmbedding(layers.Layer):
    def __init__(self, maxlen, vocab_size, embed_dim):
        super().__init__()
        self.token_emb = layers.Embedding(input_dim=vocab_size, output_dim=embed_dim)
        self.pos_emb = layers.Embedding(input_dim=maxlen, output_dim=embed_dim)

    def call(self, x):
        maxlen = ops.shape(x)[-1]
        positions = ops.arange(start=0, stop=maxlen, step=1)
        positions = self.pos_emb(positions)
        x = self.token_emb(x)
        return x + positions


def transformer_classifier(rate):
    def build():
        embed_dim, num_heads, ff_dim = 8, 2, 16
        inputs = layers.Input(shape=(MAXLEN,))
        embedding_layer = TokenAndPositionEmbedding(MAXLEN, VOCAB, embed_dim)
        x = embedding_layer(inputs)
        transformer_block = TransformerBlock(embed_dim, num_heads, ff_dim, rate)
        x = transformer_block(x)
        x = layers.GlobalAveragePooling1D()(x)
        x = layers.Dropout(rate)(x)
        x = layers.Dense(8, activation="relu")(x)
        x = layers.Dropout(rate)(x)
        outputs = layers.Dense(2, activation="softmax")(x)
        model = keras.Model(inputs=inputs, outputs=outputs)
        # The example's Adam; SGD keeps round-off at round-off (attention
        # has gradients that are zero in exact arithmetic, see
        # tests/models/test_transformer.py).
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model
    return build


def transformer_data():
    rng = _rng()
    return _tokens(rng, pad=False), rng.integers(0, 2, SAMPLES), {}


# --- several inputs and outputs -------------------------------------------


def multi_input_list_outputs():
    # keras.io functional API guide: ticket classification, small.
    title_input = keras.Input(shape=(None,), name="title", dtype="int32")
    body_input = keras.Input(shape=(8,), name="body")
    title_features = layers.Embedding(VOCAB, 8)(title_input)
    title_features = layers.GlobalAveragePooling1D()(title_features)
    body_features = layers.Dense(8, activation="relu")(body_input)
    x = layers.concatenate([title_features, body_features])
    x = layers.Dense(16, activation="relu")(x)
    priority_pred = layers.Dense(1, name="priority")(x)
    department_pred = layers.Dense(3, activation="softmax", name="department")(x)
    model = keras.Model(inputs=[title_input, body_input], outputs=[priority_pred, department_pred])
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=[keras.losses.BinaryCrossentropy(from_logits=True),
              keras.losses.SparseCategoricalCrossentropy()],
        loss_weights=[1.0, 0.2],
        metrics=[["mae"], ["accuracy"]],
    )
    return model


def multi_input_list_data():
    rng = _rng()
    x = [_tokens(rng), rng.normal(size=(SAMPLES, 8)).astype("float32")]
    y = [rng.integers(0, 2, (SAMPLES, 1)).astype("float32"), _labels(rng)]
    return x, y, {}


def dict_outputs():
    inputs = keras.Input(shape=(8,), name="features")
    x = layers.Dense(16, activation="relu")(inputs)
    x = layers.Dense(16, activation="relu")(x)
    outputs = {
        "kind": layers.Dense(3, activation="softmax", name="kind")(x),
        "score": layers.Dense(1, name="score")(x),
    }
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss={"kind": "sparse_categorical_crossentropy", "score": "mse"},
        loss_weights={"kind": 1.0, "score": 0.5},
        metrics={"kind": ["accuracy"], "score": ["mae"]},
    )
    return model


def dict_data():
    x, rng = _features()
    return {"features": x}, {"kind": _labels(rng), "score": x[:, :1] * 0.5}, {}


# --- losses, regularizers, weights -----------------------------------------


class ActivityRegularizationLayer(layers.Layer):
    # keras.io making_new_layers_and_models_via_subclassing.
    def __init__(self, rate=1e-2):
        super().__init__()
        self.rate = rate

    def call(self, inputs):
        self.add_loss(self.rate * ops.mean(inputs))
        return inputs


def regularized():
    inputs = keras.Input(shape=(8,))
    x = layers.Dense(16, activation="relu", kernel_regularizer=keras.regularizers.l2(1e-2))(inputs)
    x = ActivityRegularizationLayer()(x)
    x = layers.Dense(16, activation="relu", activity_regularizer=keras.regularizers.l1(1e-3))(x)
    outputs = layers.Dense(3, activation="softmax", kernel_regularizer="l2")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def weighted_mse(y_true, y_pred):
    return ops.mean(ops.square(y_true - y_pred) * (1.0 + y_true ** 2), axis=-1)


class FocalLoss(keras.losses.Loss):
    def __init__(self, gamma=2.0, **kwargs):
        super().__init__(**kwargs)
        self.gamma = gamma

    def call(self, y_true, y_pred):
        y_pred = ops.clip(y_pred, 1e-7, 1.0 - 1e-7)
        cross_entropy = -y_true * ops.log(y_pred)
        return ops.sum(((1.0 - y_pred) ** self.gamma) * cross_entropy, axis=-1)


def loss_subclass():
    inputs = keras.Input(shape=(8,))
    x = layers.Dense(16, activation="relu")(inputs)
    outputs = layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=FocalLoss(), metrics=["accuracy"])
    return model


def sample_weight_data():
    x, rng = _features()
    return x, _labels(rng), {"sample_weight": rng.random(SAMPLES).astype("float32") * 2}


def class_weight_data():
    x, rng = _features()
    return x, _labels(rng), {"class_weight": {0: 1.0, 1: 3.0, 2: 0.5}}


def plain_data():
    x, rng = _features()
    return x, _labels(rng), {}


def mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input(shape=(8,))
        x = layers.Dense(16, activation="relu")(inputs)
        x = layers.Dense(16, activation="relu")(x)
        x = layers.Dense(3)(x)
        # keras.io mixed precision guide: the softmax in float32.
        outputs = layers.Activation("softmax", dtype="float32")(x)
        model = keras.Model(inputs, outputs)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


# --- randomness and statistics --------------------------------------------


def dropout_net():
    model = keras.Sequential([
        keras.Input(shape=(8,)),
        layers.Dense(32, activation="relu"),
        layers.Dropout(0.2),
        layers.Dense(16, activation="relu"),
        layers.Dropout(0.2),
        layers.Dense(3, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def batch_norm_net():
    model = keras.Sequential([
        keras.Input(shape=(8,)),
        layers.Dense(16, use_bias=False),
        layers.BatchNormalization(),
        layers.Activation("relu"),
        layers.Dense(16),
        layers.BatchNormalization(),
        layers.Activation("relu"),
        layers.Dense(3, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


# --- uneven batches -------------------------------------------------------


def short_batches_data():
    # 31 training samples in batches of 16 (the last has 15) and 18
    # validation samples (the last batch has 2): shares that 2 replicas or
    # 4 micro-batches do not divide.
    rng = _rng()
    x = rng.normal(size=(49, 8)).astype("float32")
    return x, rng.integers(0, 3, 49), {"validation_split": 0.35}


def odd_dataset_data():
    # A tf.data pipeline batched by 33 (the last batch: 1 sample), as
    # tutorials build them; the validation set is smaller than a batch.
    rng = _rng()
    x = rng.random((67, 8, 8, 1)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 3, 67), 3)
    train = tf.data.Dataset.from_tensor_slices((x[:67], y[:67])).batch(33)
    return train, None, {"validation_data": (x[:20], y[:20]), "batch_size": None}


# --- optimizer recipes ---------------------------------------------------


def clipped(optimizer):
    """The softmax MLP with an optimizer that clips: the limits are small
    enough that every step clips (the batch's gradient norm is ~1), so a
    clip of each replica's share instead of the batch's shows."""
    def build():
        model = softmax_sparse()
        model.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        return model
    return build


def transformer_recipe():
    # The recipe Transformers are trained with: AdamW, linear warmup then
    # cosine decay, global_clipnorm=1.0 (the batch's gradient norm starts
    # near 11 on this model, so it clips).
    model = transformer_classifier(0.0)()
    schedule = keras.optimizers.schedules.CosineDecay(
        1e-4, decay_steps=8, warmup_target=2e-3, warmup_steps=4, alpha=0.1)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.01, global_clipnorm=1.0),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


# --- text preprocessing inside the model ----------------------------------

WORDS = "the cat sat on a mat dog ran far away big small red blue green sky".split()


def _texts():
    rng = _rng()
    return np.array([" ".join(rng.choice(WORDS, size=rng.integers(2, 8))) for _ in range(SAMPLES)])[:, None]


def text_vectorization_classifier():
    # keras.io "Text classification from scratch", end-to-end model: raw
    # strings in, an adapted TextVectorization inside the model.
    vectorize = layers.TextVectorization(max_tokens=VOCAB, output_mode="int",
                                         output_sequence_length=MAXLEN)
    vectorize.adapt(_texts()[:, 0])
    inputs = keras.Input(shape=(1,), dtype="string")
    x = layers.Embedding(VOCAB, 8)(vectorize(inputs))
    x = layers.GlobalAveragePooling1D()(x)
    x = layers.Dense(8, activation="relu")(x)
    outputs = layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def raw_text_data():
    # As keras.io feeds it: a tf.data pipeline of raw strings (Keras' array
    # path takes no numpy string arrays, on one device either).
    dataset = tf.data.Dataset.from_tensor_slices((_texts(), _rng().integers(0, 2, SAMPLES))).batch(16)
    return dataset, None, {"batch_size": None}


# --- keras_hub models (tiny configs, random weights: no download) ----------
# keras_hub is imported when an idiom is built: it takes seconds.

HUB_VOCAB, HUB_LENGTH = 64, 8


def _hub():
    import keras_hub

    return keras_hub


def _hub_compiled(model, **metrics):
    # As keras_hub's guides compile their tasks: Adam, logits.
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), **metrics)
    return model


def gpt2_backbone(**overrides):
    config = dict(vocabulary_size=HUB_VOCAB, num_layers=2, num_heads=2, hidden_dim=32,
                  intermediate_dim=64, max_sequence_length=16, dropout=0.0)
    return _hub().models.GPT2Backbone(**{**config, **overrides})


def gpt2_own_head():
    # A backbone with a head of one's own (untied): next-token logits.
    backbone = gpt2_backbone()
    inputs = {name: keras.Input(shape=(None,), dtype="int32", name=name)
              for name in ("token_ids", "padding_mask")}
    x = backbone(inputs)
    outputs = layers.Dense(HUB_VOCAB, name="lm_head")(x)
    model = keras.Model(inputs, outputs)
    return _hub_compiled(model, weighted_metrics=["accuracy"])


def gpt2_causal_lm():
    # keras.io "GPT2 text generation": the causal LM, compiled as there. Its
    # output projection is the token embedding (ReversibleEmbedding, tied).
    model = _hub().models.GPT2CausalLM(backbone=gpt2_backbone(), preprocessor=None)
    return _hub_compiled(model, weighted_metrics=["accuracy"])


def next_token_data():
    # What keras_hub's causal LM preprocessor yields: ids, mask, the next
    # ids as labels and the mask as sample weight; ragged lengths.
    rng = _rng()
    ids = rng.integers(1, HUB_VOCAB, (SAMPLES, HUB_LENGTH + 1))
    lengths = rng.integers(4, HUB_LENGTH + 2, SAMPLES)
    mask = (np.arange(HUB_LENGTH + 1)[None, :] < lengths[:, None])
    ids = np.where(mask, ids, 0).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": mask[:, :-1].astype("int32")}
    return x, ids[:, 1:], {"sample_weight": mask[:, 1:].astype("float32")}


def bert_classifier():
    # keras_hub's BertTextClassifier on a tiny backbone: single-segment
    # input, so every segment id is 0 (a lookup whose ids are the same in
    # every sample and still per sample). A guess from the ids' values took
    # them for positions and summed their rows per micro-batch, which Adam
    # squares differently: 2.7e-3 from one device under GPipe(2, M=2) and
    # 5.3e-4 under DataParallel(2, microbatches=2); the kind of lookup is
    # read from the step's graph (tfpar.core.lookups.depends_on_batch).
    backbone = _hub().models.BertBackbone(
        vocabulary_size=HUB_VOCAB, num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64,
        max_sequence_length=16, dropout=0.0)
    model = _hub().models.BertTextClassifier(backbone, num_classes=2, preprocessor=None, dropout=0.0)
    return _hub_compiled(model, metrics=["accuracy"])


def bert_data():
    rng = _rng()
    ids = rng.integers(1, HUB_VOCAB, (SAMPLES, HUB_LENGTH)).astype("int32")
    x = {"token_ids": ids, "segment_ids": np.zeros_like(ids),
         "padding_mask": np.ones_like(ids)}
    return x, rng.integers(0, 2, SAMPLES), {}


# --- model structure -----------------------------------------------------


def sequential_without_input():
    # Built by fit from the first batch.
    model = keras.Sequential([
        layers.Dense(16, activation="relu"),
        layers.Dense(16, activation="relu"),
        layers.Dense(3, activation="softmax"),
    ])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def nested_partly_frozen():
    # Transfer learning as keras.io writes it: a base model, partly frozen.
    base = keras.Sequential([
        keras.Input(shape=(8,)),
        layers.Dense(16, activation="relu", name="base_1"),
        layers.Dense(16, activation="relu", name="base_2"),
    ], name="base")
    base.get_layer("base_1").trainable = False
    inputs = keras.Input(shape=(8,))
    x = base(inputs)
    x = layers.Dense(8, activation="relu")(x)
    outputs = layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class CustomModel(keras.Model):
    # keras.io customizing_what_happens_in_fit (TensorFlow), first example.
    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(y=y, y_pred=y_pred)
        trainable_vars = self.trainable_variables
        gradients = tape.gradient(loss, trainable_vars)
        self.optimizer.apply(gradients, trainable_vars)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred)
        return {m.name: m.result() for m in self.metrics}


def custom_train_step():
    inputs = keras.Input(shape=(8,))
    x = layers.Dense(16, activation="relu")(inputs)
    outputs = layers.Dense(3, activation="softmax")(x)
    model = CustomModel(inputs, outputs)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


IDIOMS = [
    Idiom("softmax + sparse_categorical_crossentropy", _seeded(softmax_sparse), plain_data),
    Idiom("softmax + categorical_crossentropy, one-hot", _seeded(softmax_one_hot), one_hot_data,
          atol=ADAM_ATOL, multi_worker=False),
    Idiom("softmax + loss object, RMSprop", _seeded(softmax_loss_object), plain_data, atol=ADAM_ATOL,
          multi_worker=False),
    Idiom("sigmoid + binary_crossentropy", _seeded(sigmoid_binary), binary_data, atol=ADAM_ATOL,
          multi_worker=False),
    Idiom("sigmoid multi-label", _seeded(sigmoid_multi_label), multi_label_data,
          multi_worker=False),
    Idiom("regression: mse, mae and Huber heads", _seeded(regression_heads), regression_heads_data,
          multi_worker=False),
    Idiom("Conv2D + pooling", _seeded(conv_net), image_data, atol=ADAM_ATOL, multi_worker=False,
          per_sample=True),
    Idiom("Embedding(mask_zero) + LSTM", _seeded(embedding_lstm_masked), text_data(),
          atol=ADAM_ATOL, multi_worker=False),
    Idiom("Embedding + GRU", _seeded(embedding_gru), text_data(binary=True), multi_worker=False,
          per_sample=True),
    Idiom("Embedding + Bidirectional LSTM", _seeded(bidirectional_lstm), text_data(binary=True),
          multi_worker=False, per_sample=True),
    Idiom("keras.io TransformerBlock", _seeded(transformer_classifier(0.0)), transformer_data,
          multi_worker=False, per_sample=True),
    Idiom("two inputs, list outputs, loss_weights", _seeded(multi_input_list_outputs),
          multi_input_list_data),
    Idiom("dict outputs, per-output losses and metrics", _seeded(dict_outputs), dict_data,
          atol=ADAM_ATOL),
    Idiom("weight and activity regularizers, add_loss", _seeded(regularized), plain_data),
    Idiom("custom loss function", _seeded(regression(weighted_mse)), regression_data,
          multi_worker=False),
    Idiom("Loss subclass", _seeded(loss_subclass), one_hot_data, multi_worker=False),
    Idiom("sample_weight", _seeded(softmax_sparse), sample_weight_data),
    Idiom("class_weight", _seeded(softmax_sparse), class_weight_data),
    Idiom("mixed precision", _seeded(mixed_precision), plain_data, atol=MIXED_ATOL),
    Idiom("Dropout", _seeded(dropout_net), plain_data, compare="curves"),
    # 32 per batch: 8 per micro-batch at M=4, a BatchNormalization batch
    # that still estimates its statistics.
    Idiom("BatchNormalization", _seeded(batch_norm_net), plain_data, compare="curves", batch=32),
    Idiom("Sequential without Input", _seeded(sequential_without_input), plain_data),
    Idiom("nested model, partly frozen", _seeded(nested_partly_frozen), plain_data, atol=ADAM_ATOL),
    Idiom("uneven last batch, validation_split", _seeded(softmax_sparse), short_batches_data),
    Idiom("Dataset.batch(33), one-sample last batch, conv", _seeded(conv_net), odd_dataset_data,
          atol=ADAM_ATOL),
    Idiom("global_clipnorm, SGD", _seeded(clipped(lambda: keras.optimizers.SGD(0.5, global_clipnorm=0.05))),
          plain_data),
    Idiom("clipnorm, Adam", _seeded(clipped(lambda: keras.optimizers.Adam(0.01, clipnorm=0.02))),
          plain_data, atol=ADAM_ATOL),
    Idiom("clipvalue, SGD", _seeded(clipped(lambda: keras.optimizers.SGD(0.5, clipvalue=0.01))),
          plain_data),
    Idiom("gradient_accumulation_steps=2, SGD",
          _seeded(clipped(lambda: keras.optimizers.SGD(0.05, gradient_accumulation_steps=2))), plain_data,
          accumulates=True),
    Idiom("gradient_accumulation_steps=2, AdamW, global_clipnorm",
          _seeded(clipped(lambda: keras.optimizers.AdamW(0.01, gradient_accumulation_steps=2,
                                                         global_clipnorm=0.05))),
          plain_data, atol=ADAM_ATOL, accumulates=True),
    Idiom("Transformer recipe: AdamW, warmup + cosine decay, global_clipnorm=1.0",
          _seeded(transformer_recipe), transformer_data, atol=ADAM_ATOL),
    Idiom("TextVectorization inside the model (string inputs)", _seeded(text_vectorization_classifier),
          raw_text_data, atol=ADAM_ATOL),
    Idiom("keras_hub GPT-2 backbone, own head", _seeded(gpt2_own_head), next_token_data,
          atol=ADAM_ATOL),
    Idiom("keras_hub GPT2CausalLM (tied embeddings)", _seeded(gpt2_causal_lm), next_token_data,
          atol=ADAM_ATOL),
    Idiom("keras_hub BertTextClassifier (segment ids)", _seeded(bert_classifier), bert_data,
          atol=ADAM_ATOL),
    Idiom("keras.Model subclass with train_step", _seeded(custom_train_step), plain_data,
          pipelines=r"overrides \['train_step'\] cannot be split", loss_per_replica=True,
          own_train_step=True),
]
# The idioms of the two-worker job (see Idiom.multi_worker).
MULTI_WORKER = [idiom for idiom in IDIOMS if idiom.multi_worker]
