"""Strategies: how a model's training is spread over devices.

One module per strategy. Those that TensorFlow's model fits are
`tf.distribute.Strategy` subclasses (`DataParallel`); model splitting and
pipelining are tfpar objects (`ModelSplit`, `GPipe`). `registry` maps the
names users pass to `fit_distributed` onto them; `contract` is what
`fit_distributed` asks of each. `PowerSGD` (`tfpar.comm.powersgd`) is a
`compression` option of the data-parallel strategies.
"""

from tfpar.comm.powersgd import PowerSGD
from tfpar.strategies.data_parallel import DataParallel
from tfpar.strategies.gpipe import GPipe
from tfpar.strategies.model_split import ModelSplit
from tfpar.strategies.multi_worker import MultiWorker
from tfpar.strategies.pipeline_strategy import PipelineStrategy

__all__ = ["DataParallel", "GPipe", "ModelSplit", "MultiWorker", "PipelineStrategy", "PowerSGD"]
