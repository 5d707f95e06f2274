import pytest

from tfpar.core import devices
import tfpar

from conftest import DEVICES


def test_configure_devices_split_the_cpu_into_four():
    assert DEVICES == [f"/device:CPU:{i}" for i in range(4)]


def test_configure_devices_again_with_same_layout_is_a_no_op():
    assert tfpar.configure_devices(cpu=4) == DEVICES


def test_configure_devices_after_initialisation_says_to_call_it_first():
    with pytest.raises(RuntimeError, match="before any other TensorFlow work"):
        tfpar.configure_devices(cpu=3)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_configure_devices_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="whole number >= 1"):
        tfpar.configure_devices(cpu=bad)


def test_configure_devices_gpu_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no GPU"):
        tfpar.configure_devices(gpu=2)


@pytest.mark.parametrize(
    "request_, expected",
    [
        (None, DEVICES),
        (2, DEVICES[:2]),
        ("cpu:1", ["/device:CPU:1"]),
        (["/cpu:3", "/device:CPU:0"], ["/device:CPU:3", "/device:CPU:0"]),
        (["/job:localhost/replica:0/task:0/device:CPU:2"], ["/device:CPU:2"]),
    ],
)
def test_resolve_accepts_counts_and_names(request_, expected):
    assert devices.resolve(request_) == expected


def test_resolve_missing_device_lists_available():
    with pytest.raises(ValueError, match=r"'/cpu:9' does not exist.*CPU:3"):
        devices.resolve(["/cpu:9"])


@pytest.mark.parametrize("count", [0, 5])
def test_resolve_count_out_of_range(count):
    with pytest.raises(ValueError, match=f"devices={count}.*4 are available"):
        devices.resolve(count)


def test_resolve_duplicates_and_empty_and_type():
    with pytest.raises(ValueError, match="repeat"):
        devices.resolve(["cpu:0", "/device:CPU:0"])
    with pytest.raises(ValueError, match="at least one"):
        devices.resolve([])
    with pytest.raises(TypeError):
        devices.resolve(2.0)


def test_local_devices_defaults_to_cpu_here():
    assert devices.local_devices() == DEVICES


def test_a_split_cpu_gives_each_op_its_share_of_the_cores():
    # cores // K threads per op (at least one), so K stages running at once
    # do not fight over the same cores; an unsplit CPU keeps TF's default.
    import os

    from tfpar.core import devices

    cores = len(os.sched_getaffinity(0))
    assert devices._auto_threads(None) is None and devices._auto_threads(1) is None
    assert devices._auto_threads(2 * cores) == 1
    assert devices._auto_threads(cores) == 1 and devices._auto_threads(1 + cores) == 1
    if cores >= 4:
        assert devices._auto_threads(2) == cores // 2
