"""The entry point of each Bazel `py_test` in BUILD: runs the test file given
as argument through pytest and exits with pytest's status.

A `py_test` whose `main` is the test file itself would only define the test
functions and exit 0, passing without running a test; tests/test_build.py
checks that a failing test makes this entry point fail.
"""

import sys

import pytest

if __name__ == "__main__":
    # In-process (-n 0): Bazel runs one target per test file already.
    sys.exit(pytest.main(["-q", "-n", "0", "-p", "no:cacheprovider", *sys.argv[1:]]))
