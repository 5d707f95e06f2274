"""The data-parallel replica machinery under `DataParallel` and `MultiWorker`.

`replica_steps` (each replica's train step: micro-batches, summed
gradients), `train_function` (the train function Keras runs, on one host
or across workers), and the input stream: `equal_shares` (equal, padded
shares of uneven batches), `speed_shares` and `device_speeds` (shares by
device speed), `epoch_stream` (one dataset iterator across epochs).
"""

from tfpar.core import lazy_submodules as _lazy_submodules

__getattr__ = _lazy_submodules(__name__)
