"""Datasets for training and benchmarks, and loaders for the user's own data.

Every function returns numpy arrays as `((x_train, y_train), (x_test,
y_test))`, the shape every strategy takes, and needs no network at run time:

- `digits`: the UCI handwritten digits that ship with scikit-learn (real).
- `reversal`: a synthetic sequence-to-sequence task, reverse a sequence of
  tokens, for the Transformer; its accuracy is measurable and 1.0 is
  reachable.
- `random_classification`: random features and labels for benchmarks.
- `npz`, `tfrecord`, `image_folder`: the user's data on disk.
- `load("name" or "kind:path")`: one of the above by name (the training
  binary's --dataset flag).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def digits(*, test_fraction: float = 0.2, seed: int = 0):
    """The UCI handwritten digits (1,797 8x8 images, 10 classes).

    The data ships inside scikit-learn, so it loads offline. Pixels are scaled
    to [0, 1] and flattened to 64 features; the split is stratified-free but
    seeded, so it is the same on every machine.

    Args:
      test_fraction: share of samples held out for testing.
      seed: seed of the shuffle before the split.

    Returns:
      `((x_train, y_train), (x_test, y_test))` as float32 / int32 arrays.

    Example:
        >>> (x, y), (x_test, y_test) = tfpar.datasets.digits()
        >>> x.shape, x_test.shape
        ((1438, 64), (359, 64))
    """
    _check_fraction(test_fraction)
    from sklearn.datasets import load_digits  # Imported late: only this loader needs it.

    bunch = load_digits()
    x = (bunch.data / 16.0).astype("float32")
    y = bunch.target.astype("int32")
    return _split(x, y, test_fraction, seed)


def reversal(
    *,
    samples: int = 4096,
    length: int = 8,
    vocab_size: int = 12,
    test_fraction: float = 0.2,
    seed: int = 0,
):
    """Sequence reversal: given source tokens, produce them in reverse order.

    Tokens 0 and 1 are reserved (padding, start of sequence); the data uses
    tokens 2..vocab_size-1. Inputs are `[source, target_in]`, where
    target_in is the reversed source shifted right behind the start token
    (teacher forcing); labels are the reversed source.

    Args:
      samples: number of sequences before the split.
      length: tokens per sequence.
      vocab_size: size of the token vocabulary (>= 3).
      test_fraction: share held out for testing.
      seed: seed of the random sequences.

    Returns:
      `(([source, target_in], target), ([source, target_in], target))`,
      int32 arrays of shape (n, length).

    Example:
        >>> (x, y), (x_test, y_test) = tfpar.datasets.reversal(samples=10, length=4)
        >>> bool((y[:, ::-1] == x[0]).all()), bool((x[1][:, 0] == 1).all())
        (True, True)
    """
    _check_fraction(test_fraction)
    if vocab_size < 3 or length < 1 or samples < 2:
        raise ValueError(
            "reversal needs vocab_size >= 3, length >= 1 and samples >= 2. Received: "
            f"vocab_size={vocab_size}, length={length}, samples={samples}."
        )
    rng = np.random.default_rng(seed)
    source = rng.integers(2, vocab_size, size=(samples, length)).astype("int32")
    target = source[:, ::-1].copy()
    target_in = np.concatenate([np.ones((samples, 1), "int32"), target[:, :-1]], axis=1)
    split = samples - int(round(samples * test_fraction))
    return (([source[:split], target_in[:split]], target[:split]),
            ([source[split:], target_in[split:]], target[split:]))


def random_classification(
    *,
    samples: int = 4096,
    features: int = 256,
    num_classes: int = 10,
    test_fraction: float = 0.2,
    seed: int = 0,
):
    """Normal random features with uniform random labels, for benchmarks.

    Example:
        >>> (x, y), _ = tfpar.datasets.random_classification(samples=8, features=3)
        >>> x.shape, y.dtype
        ((6, 3), dtype('int32'))
    """
    _check_fraction(test_fraction)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, features)).astype("float32")
    y = rng.integers(0, num_classes, size=samples).astype("int32")
    return _split(x, y, test_fraction, seed)


def npz(path: str, *, test_fraction: float = 0.2, seed: int = 0):
    """Arrays from a numpy .npz file.

    The file holds either `x_train, y_train, x_test, y_test` (used as they
    are) or `x, y` (split with `test_fraction` after a seeded shuffle).

    Raises:
      ValueError: the file lacks those arrays, or their lengths differ.

    Example:
        >>> np.savez("data.npz", x=np.zeros((10, 4)), y=np.arange(10))
        >>> (x, y), (x_test, y_test) = tfpar.datasets.npz("data.npz")
        >>> x.shape, x_test.shape
        ((8, 4), (2, 4))
    """
    _check_fraction(test_fraction)
    with np.load(_existing(path)) as data:
        keys = set(data.files)
        if {"x_train", "y_train", "x_test", "y_test"} <= keys:
            parts = [data[k] for k in ("x_train", "y_train", "x_test", "y_test")]
            _check_lengths(path, parts[0], parts[1])
            _check_lengths(path, parts[2], parts[3])
            return (parts[0], parts[1]), (parts[2], parts[3])
        if {"x", "y"} <= keys:
            x, y = data["x"], data["y"]
            _check_lengths(path, x, y)
            return _split(x, y, test_fraction, seed)
    raise ValueError(
        f"{path} must hold arrays x and y, or x_train, y_train, x_test and y_test. "
        f"Received arrays: {sorted(keys)}."
    )


def tfrecord(
    paths: str | Sequence[str],
    *,
    x_key: str = "x",
    y_key: str = "y",
    x_shape: Sequence[int] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
):
    """Examples from TFRecord files of `tf.train.Example`s.

    Each example holds a float list feature `x_key` (the sample, flattened)
    and an int64 feature `y_key` (its label). Files are read whole into
    memory, which suits datasets that fit in RAM.

    Args:
      paths: a file, a glob pattern or a list of files.
      x_key, y_key: feature names of the sample and its label.
      x_shape: shape of one sample (default: the flat feature vector).
      test_fraction, seed: how to hold out a test split.

    Raises:
      ValueError: no files match, a feature is missing or of another type,
        or samples differ in size.

    Example:
        >>> with tf.io.TFRecordWriter("train-0.tfrecord") as writer:
        ...     for label in range(5):
        ...         writer.write(tf.train.Example(features=tf.train.Features(feature={
        ...             "x": tf.train.Feature(float_list=tf.train.FloatList(value=[label] * 64)),
        ...             "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))})
        ...         ).SerializeToString())
        >>> (x, y), _ = tfpar.datasets.tfrecord("train-*.tfrecord", x_shape=(8, 8, 1))
        >>> x.shape[1:]
        (8, 8, 1)
    """
    import tensorflow as tf  # Late: only this loader needs TensorFlow.

    _check_fraction(test_fraction)
    files = tf.io.gfile.glob(paths) if isinstance(paths, str) else [str(p) for p in paths]
    if not files:
        raise ValueError(f"No TFRecord files match {paths!r}. Pass a file, a glob or a list of files.")
    xs, ys = [], []
    for record in tf.data.TFRecordDataset(sorted(files)):
        example = tf.train.Example.FromString(record.numpy())
        features = example.features.feature
        for key, kind in ((x_key, "float_list"), (y_key, "int64_list")):
            if key not in features or features[key].WhichOneof("kind") != kind:
                raise ValueError(
                    f"Each example needs a {kind} feature {key!r}. Received an example with "
                    f"features: { {k: v.WhichOneof('kind') for k, v in features.items()} }."
                )
        xs.append(np.asarray(features[x_key].float_list.value, "float32"))
        ys.append(features[y_key].int64_list.value[0])
    sizes = sorted({len(v) for v in xs})
    if len(sizes) > 1:
        raise ValueError(f"Samples in {paths!r} differ in size: {sizes}. All must be the same size.")
    x = np.stack(xs)
    if x_shape is not None:
        if int(np.prod(x_shape)) != x.shape[1]:
            raise ValueError(
                f"x_shape {tuple(x_shape)} holds {int(np.prod(x_shape))} values but the samples "
                f"have {x.shape[1]}."
            )
        x = x.reshape((len(x), *x_shape))
    return _split(x, np.asarray(ys, "int32"), test_fraction, seed)


def image_folder(
    path: str,
    *,
    image_size: Sequence[int] = (32, 32),
    channels: int = 3,
    test_fraction: float = 0.2,
    seed: int = 0,
):
    """Images in one sub-folder per class (`path/cat/1.png`, `path/dog/7.jpg`).

    Classes are the sub-folder names in sorted order (label 0 is the first);
    images are decoded, resized to `image_size` and scaled to [0, 1].

    Returns:
      `((x_train, y_train), (x_test, y_test))` and sets nothing else; the
      class names are `sorted(os.listdir(path))` of the sub-folders.

    Raises:
      ValueError: the folder does not exist, has no class sub-folders, or a
        class has no images.

    Example:
        >>> for name in ("daisy", "rose"):
        ...     os.makedirs(f"flowers/{name}")
        ...     for i in range(3):
        ...         keras.utils.save_img(f"flowers/{name}/{i}.png", np.zeros((32, 32, 3)))
        >>> (x, y), _ = tfpar.datasets.image_folder("flowers", image_size=(64, 64))
        >>> x.shape[1:], sorted(set(y.tolist()))
        ((64, 64, 3), [0, 1])
    """
    import tensorflow as tf  # Late: only this loader needs TensorFlow.

    _check_fraction(test_fraction)
    classes = sorted(d for d in os.listdir(_existing(path)) if os.path.isdir(os.path.join(path, d)))
    if not classes:
        raise ValueError(f"{path} has no sub-folders; put each class's images in a sub-folder of its own.")
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in os.listdir(os.path.join(path, name)) if f.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise ValueError(f"Class folder {os.path.join(path, name)} has no images ({', '.join(IMAGE_SUFFIXES)}).")
        for file in files:
            data = tf.io.read_file(os.path.join(path, name, file))
            image = tf.io.decode_image(data, channels=channels, expand_animations=False)
            images.append(tf.image.resize(tf.cast(image, tf.float32) / 255.0, image_size).numpy())
            labels.append(label)
    return _split(np.stack(images).astype("float32"), np.asarray(labels, "int32"), test_fraction, seed)


DATASETS = ("digits", "reversal", "random", "npz:PATH", "tfrecord:PATH", "images:DIR")


def load(spec: str, *, seed: int = 0):
    """A dataset by name: digits, reversal, random, npz:PATH, tfrecord:PATH or images:DIR.

    Raises:
      ValueError: an unknown name, with the names that exist.

    Example:
        >>> (x, y), (x_test, y_test) = tfpar.datasets.load("digits")
    """
    kind, _, path = spec.partition(":")
    simple = {"digits": digits, "reversal": reversal, "random": random_classification}
    if kind in simple and not path:
        return simple[kind](seed=seed)
    loaders = {"npz": npz, "tfrecord": tfrecord, "images": image_folder}
    if kind in loaders and path:
        return loaders[kind](path, seed=seed)
    raise ValueError(f"Unknown dataset {spec!r}. Use one of: {', '.join(DATASETS)}.")


def _split(x, y, test_fraction: float, seed: int):
    order = np.random.default_rng(seed).permutation(len(x))
    split = len(x) - int(round(len(x) * test_fraction))
    train, test = order[:split], order[split:]
    return (x[train], y[train]), (x[test], y[test])


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"test_fraction must be between 0 and 1 (exclusive). Received: {test_fraction!r}."
        )


def _check_lengths(path, x, y) -> None:
    if len(x) != len(y):
        raise ValueError(f"In {path}, x and y must have one label per sample. Received: {len(x)} samples, {len(y)} labels.")


def _existing(path: str) -> str:
    if not os.path.exists(path):
        raise ValueError(f"{path} does not exist. Check the path (it is read on this machine).")
    return path
