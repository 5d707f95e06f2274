"""Reference models, each a function that returns an uncompiled keras.Model."""

from tfpar.models.cnn import residual_cnn
from tfpar.models.mlp import mlp
from tfpar.models.transformer import encoder_decoder_balance, transformer

__all__ = ["encoder_decoder_balance", "mlp", "residual_cnn", "transformer"]
