"""Only the chief worker writes: checkpoints, TensorBoard logs, saved models.

In multi-worker training every worker runs the same callbacks, but files
must be written once. As TensorFlow requires, the other workers still run
their callbacks (saving takes part in the same steps) but write to a
temporary directory that is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import keras


@contextlib.contextmanager
def only_chief_writes(callbacks, is_chief: bool):
    """Points non-chief workers' file-writing callbacks at a temporary dir."""
    if is_chief or not callbacks:
        yield
        return
    scratch = tempfile.mkdtemp(prefix="tfpar-worker-")
    saved = []
    for callback in callbacks:
        for attribute in _paths(callback):
            old = getattr(callback, attribute)
            saved.append((callback, attribute, old))
            setattr(callback, attribute, os.path.join(scratch, os.path.basename(str(old)) or "out"))
    try:
        yield
    finally:
        for callback, attribute, old in saved:
            setattr(callback, attribute, old)
        shutil.rmtree(scratch, ignore_errors=True)


def _paths(callback) -> list[str]:
    if isinstance(callback, keras.callbacks.ModelCheckpoint):
        return ["filepath"]
    if isinstance(callback, keras.callbacks.TensorBoard):
        return ["log_dir"]
    return []
