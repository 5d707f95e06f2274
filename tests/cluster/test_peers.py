"""Ports and peers: clear errors before TensorFlow's start-up can hang."""

import json
import socket
import threading

import pytest

from tfpar.cluster import peers, tf_config


def test_free_ports_are_distinct_and_bindable():
    ports = peers.free_ports(3)
    assert len(set(ports)) == 3
    for port in ports:
        peers.check_port_free(f"localhost:{port}")


def test_port_in_use_is_a_clear_error():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(ValueError, match=f"Port {port} .* already in use"):
            peers.check_port_free(f"localhost:{port}")
    peers.check_port_free(f"localhost:{peers.free_ports(1)[0]}")


def _config(ports, index):
    return tf_config.parse(json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                                       "task": {"type": "worker", "index": index}}))


def test_a_peer_that_never_starts_is_a_clear_error_naming_it():
    ports = peers.free_ports(2)
    with pytest.raises(ValueError, match=rf"2 workers, but 1 of them did not start within 1 s: \['localhost:{ports[1]}'\]"):
        peers.wait_for_peers(_config(ports, 0), timeout_seconds=1)


def test_two_peers_find_each_other():
    ports = peers.free_ports(2)
    errors = []

    def wait(index):
        try:
            peers.wait_for_peers(_config(ports, index), timeout_seconds=20)
        except Exception as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == [] and not any(t.is_alive() for t in threads)
