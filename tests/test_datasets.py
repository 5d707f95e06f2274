import numpy as np
import pytest

import tfpar


def test_digits_split_is_seeded_and_complete():
    (x, y), (x_test, y_test) = tfpar.datasets.digits()
    assert x.shape == (1438, 64) and x_test.shape == (359, 64)
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    assert sorted(set(y.tolist())) == list(range(10))
    (x2, _), _ = tfpar.datasets.digits()
    np.testing.assert_array_equal(x, x2)


def test_digits_rejects_a_bad_fraction():
    with pytest.raises(ValueError, match="between 0 and 1.*1.5"):
        tfpar.datasets.digits(test_fraction=1.5)
