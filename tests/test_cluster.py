import json
import socket

import pytest

from tfpar import cluster


def test_local_configs_describe_one_loopback_cluster():
    configs = [cluster.parse(c) for c in cluster.local_configs(3)]
    assert [c.task_index for c in configs] == [0, 1, 2]
    addresses = configs[0].cluster["worker"]
    assert len(set(addresses)) == 3 and all(a.startswith("localhost:") for a in addresses)
    assert [c.is_chief for c in configs] == [True, False, False]
    assert configs[2].num_workers == 3 and configs[2].address == addresses[2]


def test_chief_job_is_the_chief():
    config = cluster.parse(json.dumps({"cluster": {"chief": ["h:1"], "worker": ["h:2"]},
                                       "task": {"type": "worker", "index": 0}}))
    assert not config.is_chief and config.num_workers == 2


@pytest.mark.parametrize("text, message", [
    ("{not json", r"TF_CONFIG must be JSON.*Received: TF_CONFIG='\{not json'"),
    ('{"task": {"type": "worker", "index": 0}}', r'must hold "cluster"'),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "ps", "index": 0}}', r"task type 'ps' is not a job.*\['worker'\]"),
    ('{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 2}}', r"between 0 and 1.*Received: index=2"),
    ('{"cluster": {"worker": ["nohostport"]}, "task": {"type": "worker", "index": 0}}', r'"host:port".*nohostport'),
])
def test_malformed_tf_config_is_a_clear_error(text, message):
    with pytest.raises(ValueError, match=message):
        cluster.parse(text)


def test_missing_tf_config_says_how_to_start():
    with pytest.raises(ValueError, match="TF_CONFIG is not set.*tfpar.launch"):
        cluster.from_environment({})


def test_port_in_use_is_a_clear_error():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(ValueError, match=f"Port {port} .* already in use"):
            cluster.check_port_free(f"localhost:{port}")
    cluster.check_port_free(f"localhost:{cluster.free_ports(1)[0]}")
