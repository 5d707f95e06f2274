"""Offline stand-in for rules_python's pip.bzl (tools/bazel_offline/README.md).

pip_install makes no repository: the offline config overrides @pypi with
tools/bazel_offline/pypi, whose targets are empty because the packages come
from the interpreter the tests run on.
"""

def pip_install(name, requirements = None, **kwargs):
    pass
