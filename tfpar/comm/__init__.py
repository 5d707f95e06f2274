"""Communication: how data-parallel replicas' gradients are summed.

`all_reduce` (`GradientSum`: the replicas' gradients summed with their
variables, where tfpar's optimizer sums them, as DDP's communication hooks
do), `compression` (fp16 / bf16 casts in that sum, and the choice of a
compressor) and `powersgd` (low-rank compression with error feedback, its
state kept per variable). Everything runs on TensorFlow's collectives,
locally and over gRPC.
"""

from tfpar.core import lazy_submodules as _lazy_submodules

__getattr__ = _lazy_submodules(__name__)
