"""TFPAR_MULTI_WORKER: what the launcher writes is what a worker reads."""

import pytest

from tfpar.cluster import startup


@pytest.mark.parametrize("options", [{}, {"timeout_seconds": 60}, {"compression": "bf16", "bytes_per_pack": 1024}])
def test_what_is_encoded_is_read_back(options):
    assert startup.worker_options({startup.ENV: startup.encode(options)}) == options


def test_a_process_not_launched_is_not_a_worker():
    assert startup.worker_options({}) is None
    assert startup.worker_options({startup.ENV: ""}) is None


@pytest.mark.parametrize("text, message", [
    ("{timeout", r'must be "1" or a JSON object.*Received: \'\{timeout\''),
    ("[1, 2]", r"JSON object of MultiWorker arguments. Received: '\[1, 2\]'"),
])
def test_a_bad_value_is_a_clear_error(text, message):
    with pytest.raises(ValueError, match=message):
        startup.worker_options({startup.ENV: text})


def test_a_launched_worker_makes_its_strategy_at_import_only_when_asked():
    from tfpar.strategies import MultiWorker

    assert MultiWorker.start_from_environment({}) is None

