"""Communication: how data-parallel replicas' gradients are summed.

`all_reduce` (a `tf.distribute.CrossDeviceOps` that wraps TensorFlow's own
all-reduce), `compression` (fp16 / bf16 casts around it, and the choice of
a compressor) and `powersgd` (low-rank compression with error feedback).
Everything runs on TensorFlow's collectives, locally and over gRPC.
"""

from tfpar.core import lazy_submodules as _lazy_submodules

__getattr__ = _lazy_submodules(__name__)
