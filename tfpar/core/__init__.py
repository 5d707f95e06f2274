"""The layer below everything: devices, input checks, the one door to
private Keras and TensorFlow attributes, argument checks, tables, timing,
micro-batches, lookups, and moving a user's model into a strategy and back.

No module here imports another tfpar package.
"""

import importlib as _importlib


def lazy_submodules(package: str):
    """A package's `__getattr__` that loads its submodules on first use, so
    `tfpar.core.devices.connect(...)` works without an import of its own
    while modules that import TensorFlow load only when used."""

    def __getattr__(name: str):
        if not name.startswith("_"):
            try:
                return _importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as error:
                if error.name != f"{package}.{name}":
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


__getattr__ = lazy_submodules(__name__)
