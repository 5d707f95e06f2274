"""Reference models, each a function that returns an uncompiled keras.Model."""

from tfpar.models.cnn import residual_cnn
from tfpar.models.mlp import mlp

__all__ = ["mlp", "residual_cnn"]
