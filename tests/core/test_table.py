from tfpar.core.table import format_table


def test_alignment_and_floats():
    assert format_table([("a", 1.0)], ("name", "x"), align="left").splitlines() == [
        "name  x", "----  -----", "a     1.000"]
