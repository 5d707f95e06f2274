"""The shared argument checks: whole numbers, bools refused, one error form."""

import pytest

from tfpar.core import checks


@pytest.mark.parametrize("value, minimum, whole", [
    (1, 1, True), (0, 0, True), (0, 1, False), (True, 1, False), (2.0, 1, False), ("2", 1, False)])
def test_is_whole(value, minimum, whole):
    assert checks.is_whole(value, minimum) is whole


def test_error_names_what_must_hold_and_what_was_received():
    with pytest.raises(ValueError, match=r"^bytes_per_pack must be a whole number >= 0 \(0 = one pack\)\. "
                                         r"Received: bytes_per_pack=-3\.$"):
        checks.whole_number("bytes_per_pack", -3, minimum=0, meaning=" (0 = one pack)")
