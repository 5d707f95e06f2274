"""A Transformer encoder-decoder for sequence-to-sequence tasks.

The model is functional and built from Keras' own layers (plus one small
embedding layer), so every strategy can recreate and cut it. Its layers are
created encoder first, then decoder, which makes the natural two-stage split
(`encoder_decoder_balance`) put the whole encoder on one device and the
decoder on the other. The encoder's output crosses that boundary once and is
used by every decoder block's cross-attention.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="tfpar")
class PositionalEmbedding(keras.layers.Layer):
    """Token embedding plus a learned position embedding.

    Args:
      vocab_size: number of token ids.
      length: sequence length (positions 0..length-1).
      width: embedding width.

    Example:
        >>> layer = PositionalEmbedding(12, 8, 16)
        >>> layer(keras.ops.zeros((2, 8), "int32")).shape
        TensorShape([2, 8, 16])
    """

    def __init__(self, vocab_size: int, length: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.length, self.width = vocab_size, length, width
        self.tokens = keras.layers.Embedding(vocab_size, width, name="tokens")
        self.positions = keras.layers.Embedding(length, width, name="positions")

    def build(self, input_shape):
        self.tokens.build(input_shape)
        self.positions.build((self.length,))

    def call(self, ids):
        positions = keras.ops.arange(keras.ops.shape(ids)[-1])
        return self.tokens(ids) + self.positions(positions)

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.width)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size,
                "length": self.length, "width": self.width}


def transformer(
    vocab_size: int,
    source_length: int,
    target_length: int,
    *,
    width: int = 64,
    heads: int = 4,
    feed_forward: int = 128,
    encoder_blocks: int = 2,
    decoder_blocks: int = 2,
    dropout: float = 0.0,
    name: str = "transformer",
) -> keras.Model:
    """Returns an encoder-decoder Transformer (post-norm, learned positions).

    Inputs are `[source_ids (batch, source_length), target_in_ids (batch,
    target_length)]` (the target shifted right, teacher forcing); the output
    is next-token logits `(batch, target_length, vocab_size)`. Decoder
    self-attention is causal.

    Args:
      vocab_size: token ids are in [0, vocab_size).
      source_length: length of the source sequences.
      target_length: length of the target sequences.
      width: model width (embedding and attention output).
      heads: attention heads (width is split among them).
      feed_forward: hidden width of each block's feed-forward layer.
      encoder_blocks: encoder blocks.
      decoder_blocks: decoder blocks.
      dropout: dropout rate after attention and feed-forward (0 = none).
      name: the model's name.

    Example:
        >>> model = tfpar.models.transformer(12, 8, 9)
        >>> model.output_shape
        (None, 9, 12)
        >>> tfpar.models.encoder_decoder_balance(model)  # layers per stage
        [...]
    """
    if width % heads:
        raise ValueError(
            f"width must be a multiple of heads. Received: width={width}, heads={heads}."
        )
    source = keras.Input((source_length,), dtype="int32", name="source")
    target_in = keras.Input((target_length,), dtype="int32", name="target_in")
    x = PositionalEmbedding(vocab_size, source_length, width, name="encoder_embedding")(source)
    for block in range(encoder_blocks):
        prefix = f"encoder_{block}"
        x = _residual(x, _attention(heads, width, dropout, f"{prefix}_self_attention")(x, x),
                      f"{prefix}_self")
        x = _feed_forward(x, feed_forward, width, dropout, prefix)
    memory = x
    y = PositionalEmbedding(vocab_size, target_length, width, name="decoder_embedding")(target_in)
    for block in range(decoder_blocks):
        prefix = f"decoder_{block}"
        attended = _attention(heads, width, dropout, f"{prefix}_self_attention")(
            y, y, use_causal_mask=True)
        y = _residual(y, attended, f"{prefix}_self")
        y = _residual(y, _attention(heads, width, dropout, f"{prefix}_cross_attention")(y, memory),
                      f"{prefix}_cross")
        y = _feed_forward(y, feed_forward, width, dropout, prefix)
    logits = keras.layers.Dense(vocab_size, name="logits")(y)
    return keras.Model([source, target_in], logits, name=name)


def encoder_decoder_balance(model: keras.Model) -> list[int]:
    """Layers per stage that put the encoder on stage 0, the decoder on 1.

    Pass it as `balance=` to `ModelSplit` or `GPipe` with two devices.

    Raises:
      ValueError: `model` has no layer named decoder_embedding (not made by
        `tfpar.models.transformer`).

    Example:
        >>> model = tfpar.models.transformer(12, 8, 9)
        >>> strategy = tfpar.strategies.GPipe(2, balance=tfpar.models.encoder_decoder_balance(model))
        >>> strategy.balance  # layers per stage: the encoder's, the decoder's
        [15, 22]
    """
    from tfpar.pipeline import placement  # Late: placement imports TensorFlow plumbing.

    names = [layer.name for layer in placement.layers(model)]
    if "decoder_embedding" not in names:
        raise ValueError(
            "encoder_decoder_balance needs a model made by tfpar.models.transformer "
            f"(a layer named 'decoder_embedding'). Received a model with layers: {names[:8]}..."
        )
    # Everything the decoder needs is made after its embedding, except the
    # encoder layers, which come before it in topological order.
    first_decoder = names.index("decoder_embedding")
    encoder = [n for n in names[first_decoder:] if n.startswith("encoder_")]
    if encoder:
        raise ValueError(
            f"The encoder layers {encoder} come after the decoder embedding in this "
            "model's layer order, so no contiguous split separates encoder and decoder."
        )
    return [first_decoder, len(names) - first_decoder]


def _attention(heads: int, width: int, dropout: float, name: str):
    return keras.layers.MultiHeadAttention(heads, width // heads, dropout=dropout, name=name)


def _residual(x, update, name: str):
    return keras.layers.LayerNormalization(name=f"{name}_norm")(
        keras.layers.Add(name=f"{name}_add")([x, update]))


def _feed_forward(x, hidden: int, width: int, dropout: float, prefix: str):
    y = keras.layers.Dense(hidden, activation="relu", name=f"{prefix}_ff_hidden")(x)
    y = keras.layers.Dense(width, name=f"{prefix}_ff_out")(y)
    if dropout:
        y = keras.layers.Dropout(dropout, name=f"{prefix}_ff_dropout")(y)
    return _residual(x, y, f"{prefix}_ff")
