"""tfpar: distributed training of Keras 3 models on TensorFlow, as easy as fit.

Example:
    >>> import tfpar
    >>> tfpar.configure_devices(cpu=2)
    ['/device:CPU:0', '/device:CPU:1']
    >>> history = tfpar.fit_distributed(model, x, y, batch_size=64, verbose=0,
    ...                                 strategy=tfpar.strategies.DataParallel(2))
"""

# The public names load on first use (PEP 562): `python -m tfpar.launch`
# and `python -m tfpar.server --help` then start without importing
# TensorFlow, which takes 5 to 12 s a process. A launched worker imports
# everything at once, below.
import importlib as _importlib
import importlib.util as _util

from tfpar.cluster import startup as _startup

__version__ = "0.1.0"

_PUBLIC = {  # name: (module, attribute or None for the module itself)
    "configure_devices": ("tfpar.core.devices", "configure_devices"),
    "datasets": ("tfpar.datasets", None),
    "describe_placement": ("tfpar.describe", "describe_placement"),
    "evaluate_distributed": ("tfpar.inference", "evaluate_distributed"),
    "fit_distributed": ("tfpar.fit", "fit_distributed"),
    "models": ("tfpar.models", None),
    "plan": ("tfpar.planner", "plan"),
    "Plan": ("tfpar.planner", "Plan"),
    "predict_distributed": ("tfpar.inference", "predict_distributed"),
    "strategies": ("tfpar.strategies", None),
    "timeline": ("tfpar.pipeline.timeline", None),
}


def __getattr__(name: str):
    if name in _PUBLIC:
        module, attribute = _PUBLIC[name]
        value = _importlib.import_module(module)
        if attribute is not None:
            value = getattr(value, attribute)
        globals()[name] = value
        return value
    if not name.startswith("_") and _util.find_spec(f"tfpar.{name}") is not None:
        return _importlib.import_module(f"tfpar.{name}")  # e.g. tfpar.pipeline
    raise AttributeError(f"module 'tfpar' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_PUBLIC))


# A worker started by `python -m tfpar.launch` (TFPAR_MULTI_WORKER) makes its
# MultiWorker strategy now, before the program runs any TensorFlow op:
# TensorFlow configures collectives only at startup.
if _startup.worker_options() is not None:
    for _name in _PUBLIC:
        __getattr__(_name)
    strategies.MultiWorker.start_from_environment()  # noqa: F821 (loaded just above)

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
