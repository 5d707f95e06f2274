"""How a worker learns it is one of a multi-worker job: TFPAR_MULTI_WORKER.

TensorFlow configures collectives only when its runtime starts, so a
worker's `MultiWorker` strategy must exist before the program's first
TensorFlow op. `python -m tfpar.launch` (or a Kubernetes pod spec) sets
TFPAR_MULTI_WORKER to "1" or to a JSON object of MultiWorker's arguments;
`import tfpar` reads it here and makes the strategy
(`MultiWorker.start_from_environment`), and `strategy="multi_worker"` then
finds it.

Example:
    >>> worker_options({ENV: encode({"timeout_seconds": 60})})
    {'timeout_seconds': 60}
    >>> worker_options({ENV: "1"}), worker_options({}) is None
    ({}, True)
"""

from __future__ import annotations

import json
import os

ENV = "TFPAR_MULTI_WORKER"


def encode(options: dict) -> str:
    """The variable's value that asks for MultiWorker(**options)."""
    return json.dumps(options) if options else "1"


def worker_options(environ=None) -> dict | None:
    """MultiWorker's arguments asked for by the environment, or None when
    this process is not a launched worker."""
    text = (os.environ if environ is None else environ).get(ENV)
    if not text:
        return None
    if text == "1":
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f'{ENV} must be "1" or a JSON object of MultiWorker arguments, e.g. '
            f'\'{{"timeout_seconds": 120}}\'. Received: {text!r} ({error.msg}).'
        ) from error
    if not isinstance(options, dict):
        raise ValueError(f'{ENV} must be "1" or a JSON object of MultiWorker arguments. '
                         f"Received: {text!r}.")
    return options
