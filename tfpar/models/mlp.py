"""A multi-layer perceptron classifier: the smallest reference model."""

from __future__ import annotations

from collections.abc import Sequence

import keras


def mlp(
    input_dim: int,
    num_classes: int,
    *,
    hidden: Sequence[int] = (128, 64),
    dropout: float = 0.0,
    batch_norm: bool = False,
    name: str = "mlp",
) -> keras.Model:
    """Returns an MLP: Dense + ReLU blocks, then logits for `num_classes`.

    Args:
      input_dim: features per sample.
      num_classes: number of output classes (the model outputs logits).
      hidden: width of each hidden layer.
      dropout: dropout rate after each hidden layer (0 = none).
      batch_norm: add a synchronized BatchNormalization after each hidden
        layer, so that data parallel normalises over the global batch.
      name: the model's name.

    Example:
        >>> model = tfpar.models.mlp(64, 10, hidden=(32,))
        >>> model.output_shape
        (None, 10)
    """
    layers = [keras.Input((input_dim,), name="features")]
    for i, width in enumerate(hidden):
        layers.append(keras.layers.Dense(width, activation="relu", name=f"dense_{i}"))
        if batch_norm:
            layers.append(keras.layers.BatchNormalization(synchronized=True, name=f"bn_{i}"))
        if dropout:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout_{i}"))
    layers.append(keras.layers.Dense(num_classes, name="logits"))
    return keras.Sequential(layers, name=name)
