"""Reference models, each a function that returns an uncompiled keras.Model."""

from tfpar.models.mlp import mlp

__all__ = ["mlp"]
