"""tfpar: distributed training of Keras 3 models on TensorFlow, as easy as fit.

Example:
    >>> import tfpar
    >>> tfpar.configure_devices(cpu=2)
    ['/device:CPU:0', '/device:CPU:1']
    >>> history = tfpar.fit_distributed(model, x, y, batch_size=64, verbose=0,
    ...                                 strategy=tfpar.strategies.DataParallel(2))
"""

from tfpar import datasets, models, strategies
from tfpar.describe import describe_placement
from tfpar.devices import configure_devices
from tfpar.fit import fit_distributed
from tfpar.inference import evaluate_distributed, predict_distributed
from tfpar.pipeline import timeline
from tfpar.planner import Plan, plan

# Modules that moved into the pipeline and cluster packages keep their old
# names, as attributes and for `import tfpar.schedule`, so that code written
# against the flat layout keeps working.
import sys as _sys

from tfpar.cluster import checkpoint
from tfpar.pipeline import partition, schedule

for _name, _module in (("checkpoint", checkpoint), ("partition", partition),
                       ("schedule", schedule), ("timeline", timeline)):
    _sys.modules.setdefault(f"tfpar.{_name}", _module)

__version__ = "0.1.0"

# A worker started by `python -m tfpar.launch` (TFPAR_MULTI_WORKER) makes its
# MultiWorker strategy now, before the program runs any TensorFlow op:
# TensorFlow configures collectives only at startup.
strategies.MultiWorker.start_from_environment()

__all__ = [
    "configure_devices",
    "datasets",
    "describe_placement",
    "evaluate_distributed",
    "fit_distributed",
    "models",
    "plan",
    "Plan",
    "predict_distributed",
    "strategies",
    "timeline",
]
