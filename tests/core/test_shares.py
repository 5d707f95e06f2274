"""A batch's rows per replica by device speed (pure Python)."""

from tfpar.core import shares as shares_lib


def test_shares_follow_the_speeds_and_add_up():
    # Independent of the code: 3:1 of 64 is 48 and 16; of 58, 43.5 rounds to 44.
    assert shares_lib.shares(64, [3, 1]) == [48, 16]
    assert shares_lib.shares(58, [3, 1]) == [44, 14]
    assert shares_lib.shares(64, [1, 1]) == [32, 32]
    assert shares_lib.shares(1, [3, 1]) == [1, 0]
    for count in range(1, 40):
        parts = shares_lib.shares(count, [2.5, 1, 0.5])
        assert sum(parts) == count
        assert all(abs(p - count * s / 4) <= 1 for p, s in zip(parts, [2.5, 1, 0.5]))

