"""Installs tfpar: `pip install .` (add `[test]` for the test tools)."""

from setuptools import find_packages, setup

setup(
    name="tfpar",
    version="0.1.0",
    description="Distributed training of Keras 3 models on TensorFlow, as easy as model.fit.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["tfpar", "tfpar.*"]),
    install_requires=[
        # Keras 3 line; tested on 2.21.0. Capped below the next minor release
        # because tfpar reaches private TensorFlow and Keras attributes
        # (tfpar/core/internals.py, checked by tests/test_internals.py).
        "tensorflow>=2.16,<2.22",
        # The Keras release tfpar/core/internals.py was checked on (see above).
        "keras>=3.15,<3.16",
        "numpy",
        "absl-py",
        "scikit-learn",  # ships the UCI digits used by the default job
        "matplotlib",  # pipeline timeline pictures
        "tensorboard",  # keras.callbacks.TensorBoard, python -m tfpar.train --tensorboard_dir
    ],
    # pytest-xdist: the suite runs on four processes (pyproject.toml's addopts).
    # torch: the PyTorch peer of `python -m tfpar.bench pipeline --peer torch`
    # (the CPU wheel is enough); never needed to train or test.
    # keras-hub: the conformance catalogue trains its models (tiny configs,
    # random weights, no download); pinned, like the Keras it was checked on.
    extras_require={"test": ["pytest>=7", "pytest-xdist", "keras-hub==0.32.0"], "bench": ["torch"]},
    entry_points={
        "console_scripts": [
            "tfpar-train=tfpar.train:run",
            "tfpar-bench=tfpar.bench.__main__:run",
            "tfpar-launch=tfpar.launch:run",
        ]
    },
)
