"""Offline stand-in for the requirements.bzl rules_python's pip_install
writes (tools/bazel_offline/README.md): requirement(name) is this
repository's empty py_library of that name, where the real one is the
package's wheel."""

def requirement(name):
    return "@pypi//:" + name
