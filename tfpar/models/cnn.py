"""A small residual CNN for image classification."""

from __future__ import annotations

from collections.abc import Sequence

import keras


def residual_cnn(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    filters: Sequence[int] = (16, 32),
    blocks: int = 1,
    batch_norm: bool = True,
    name: str = "residual_cnn",
) -> keras.Model:
    """Returns a ResNet-style CNN: a stem, residual blocks, pooling, logits.

    Each entry of `filters` is a group of `blocks` residual blocks (two 3x3
    convolutions and an identity or 1x1 projection shortcut); every group
    after the first halves the spatial size. The shortcuts are the skip
    connections a model split carries across stage boundaries.

    Args:
      input_shape: (height, width, channels) of one image.
      num_classes: number of classes (the model outputs logits).
      filters: channels of each group of blocks.
      blocks: residual blocks per group.
      batch_norm: add BatchNormalization after each convolution.
      name: the model's name.

    Example:
        >>> model = tfpar.models.residual_cnn((8, 8, 1), 10)
        >>> model.output_shape
        (None, 10)
    """
    inputs = keras.Input(tuple(input_shape), name="image")
    x = _conv(inputs, filters[0], 1, batch_norm, "stem")
    for group, width in enumerate(filters):
        for block in range(blocks):
            stride = 2 if group > 0 and block == 0 else 1
            x = _block(x, width, stride, batch_norm, f"g{group}b{block}")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _block(x, width: int, stride: int, batch_norm: bool, name: str):
    shortcut = x
    if stride != 1 or x.shape[-1] != width:
        shortcut = keras.layers.Conv2D(width, 1, strides=stride, name=f"{name}_proj")(x)
    y = _conv(x, width, stride, batch_norm, f"{name}_a")
    y = keras.layers.Conv2D(width, 3, padding="same", name=f"{name}_b")(y)
    if batch_norm:
        y = keras.layers.BatchNormalization(name=f"{name}_b_bn")(y)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _conv(x, width: int, stride: int, batch_norm: bool, name: str):
    x = keras.layers.Conv2D(width, 3, strides=stride, padding="same", name=name)(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)
