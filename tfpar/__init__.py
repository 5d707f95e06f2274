"""tfpar: distributed training of Keras 3 models on TensorFlow, as easy as fit.

Example:
    >>> import tfpar
    >>> tfpar.configure_devices(cpu=2)
    >>> history = tfpar.fit_distributed(model, x, y, batch_size=64,
    ...                                 strategy=tfpar.strategies.DataParallel(2))
"""

from tfpar import datasets, models, strategies, timeline
from tfpar.devices import configure_devices
from tfpar.fit import fit_distributed
from tfpar.describe import describe_placement

__version__ = "0.1.0"

# Workers started by `python -m tfpar.launch` make their MultiWorker strategy
# here, before the program runs any TensorFlow op: TensorFlow configures
# collectives only at startup, and `strategy="multi_worker"` then finds it.
# TFPAR_MULTI_WORKER is "1" or a JSON object of MultiWorker's arguments.
import json as _json
import os as _os

if _os.environ.get("TFPAR_MULTI_WORKER"):
    _options = _os.environ["TFPAR_MULTI_WORKER"]
    strategies.MultiWorker(**({} if _options == "1" else _json.loads(_options)))

__all__ = [
    "configure_devices",
    "datasets",
    "describe_placement",
    "fit_distributed",
    "models",
    "strategies",
    "timeline",
]
