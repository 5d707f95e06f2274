"""Offline stand-in for rules_python's defs.bzl: Bazel's built-in rules,
which rules_python's own py_* macros wrap (tools/bazel_offline/README.md)."""

def py_library(**attrs):
    native.py_library(**attrs)

def py_binary(**attrs):
    native.py_binary(**attrs)

def py_test(**attrs):
    native.py_test(**attrs)
