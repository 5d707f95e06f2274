import json

import pytest

from tfpar.cluster import peers, tf_config as cluster


def test_local_configs_describe_one_loopback_cluster():
    configs = [cluster.parse(c) for c in cluster.local_configs(peers.free_ports(3))]
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


def test_local_configs_hold_the_given_ports_in_order():
    configs = [json.loads(c) for c in cluster.local_configs([2222, 2223])]
    assert [c["task"]["index"] for c in configs] == [0, 1]
    assert configs[1]["cluster"] == {"worker": ["localhost:2222", "localhost:2223"]}


def test_missing_tf_config_says_how_to_start():
    with pytest.raises(ValueError, match="TF_CONFIG is not set.*tfpar.launch"):
        cluster.from_environment({})
