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


def test_reversal_targets_are_the_reversed_source_shifted_behind_a_start_token():
    (x, y), (x_test, y_test) = tfpar.datasets.reversal(samples=50, length=5, vocab_size=9, seed=3)
    source, target_in = x
    assert source.shape == (40, 5) and x_test[0].shape == (10, 5) and y_test.shape == (10, 5)
    np.testing.assert_array_equal(y, source[:, ::-1])
    np.testing.assert_array_equal(target_in[:, 0], 1)
    np.testing.assert_array_equal(target_in[:, 1:], y[:, :-1])
    assert source.min() >= 2 and source.max() <= 8
    np.testing.assert_array_equal(tfpar.datasets.reversal(samples=50, length=5, vocab_size=9, seed=3)[0][1], y)


def test_reversal_rejects_a_tiny_vocabulary():
    with pytest.raises(ValueError, match="vocab_size >= 3.*Received: vocab_size=2"):
        tfpar.datasets.reversal(vocab_size=2)


def test_random_classification_shapes():
    (x, y), (x_test, y_test) = tfpar.datasets.random_classification(samples=100, features=7, num_classes=4)
    assert x.shape == (80, 7) and x_test.shape == (20, 7) and x.dtype == np.float32
    assert set(np.concatenate([y, y_test]).tolist()) <= {0, 1, 2, 3}


def test_npz_with_a_split_or_with_x_and_y(tmp_path):
    x, y = np.arange(40, dtype="float32").reshape(20, 2), np.arange(20)
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    (a, b), (c, d) = tfpar.datasets.npz(str(tmp_path / "xy.npz"), test_fraction=0.25)
    assert len(a) == 15 and len(c) == 5
    np.testing.assert_array_equal(np.sort(np.concatenate([b, d])), y)
    np.testing.assert_array_equal(a[:, 0], 2 * b)  # rows stay with their labels
    np.savez(tmp_path / "split.npz", x_train=x[:3], y_train=y[:3], x_test=x[3:5], y_test=y[3:5])
    (a, b), (c, d) = tfpar.datasets.npz(str(tmp_path / "split.npz"))
    np.testing.assert_array_equal(c, x[3:5])


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", features=np.zeros(3))
    with pytest.raises(ValueError, match="must hold arrays x and y.*Received arrays: \\['features'\\]"):
        tfpar.datasets.npz(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "mismatch.npz", x=np.zeros((4, 2)), y=np.zeros(3))
    with pytest.raises(ValueError, match="one label per sample. Received: 4 samples, 3 labels"):
        tfpar.datasets.npz(str(tmp_path / "mismatch.npz"))
    with pytest.raises(ValueError, match="does not exist"):
        tfpar.datasets.npz(str(tmp_path / "missing.npz"))


def write_tfrecord(path, xs, ys, x_key="x"):
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for x, y in zip(xs, ys):
            example = tf.train.Example(features=tf.train.Features(feature={
                x_key: tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(x).tolist())),
                "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(y)])),
            }))
            writer.write(example.SerializeToString())


def test_tfrecord_reads_examples_back(tmp_path):
    xs = np.arange(60, dtype="float32").reshape(10, 2, 3)
    write_tfrecord(tmp_path / "a.tfrecord", xs[:6], range(6))
    write_tfrecord(tmp_path / "b.tfrecord", xs[6:], range(6, 10))
    (x, y), (x_test, y_test) = tfpar.datasets.tfrecord(str(tmp_path / "*.tfrecord"), x_shape=(2, 3))
    assert x.shape == (8, 2, 3) and x_test.shape == (2, 2, 3)
    for sample, label in zip(np.concatenate([x, x_test]), np.concatenate([y, y_test])):
        np.testing.assert_array_equal(sample, xs[label])


def test_tfrecord_errors(tmp_path):
    with pytest.raises(ValueError, match="No TFRecord files match"):
        tfpar.datasets.tfrecord(str(tmp_path / "*.tfrecord"))
    write_tfrecord(tmp_path / "a.tfrecord", np.zeros((2, 3)), [0, 1], x_key="image")
    with pytest.raises(ValueError, match="float_list feature 'x'.*'image'"):
        tfpar.datasets.tfrecord(str(tmp_path / "a.tfrecord"))
    with pytest.raises(ValueError, match="x_shape \\(2, 2\\) holds 4 values but the samples have 3"):
        tfpar.datasets.tfrecord(str(tmp_path / "a.tfrecord"), x_key="image", x_shape=(2, 2))


def test_image_folder_labels_classes_by_sorted_folder_name(tmp_path):
    import tensorflow as tf

    for name, value in (("cat", 0), ("dog", 255)):
        (tmp_path / name).mkdir()
        for i in range(3):
            pixels = tf.fill((5, 7, 3), tf.constant(value, tf.uint8))
            (tmp_path / name / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    (tmp_path / "notes.txt").write_text("not a class")
    (x, y), (x_test, y_test) = tfpar.datasets.image_folder(str(tmp_path), image_size=(4, 4), test_fraction=1 / 3)
    assert x.shape == (4, 4, 4, 3) and x_test.shape == (2, 4, 4, 3)
    for image, label in zip(np.concatenate([x, x_test]), np.concatenate([y, y_test])):
        np.testing.assert_allclose(image, float(label))  # cat black (0), dog white (1)


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="has no sub-folders"):
        tfpar.datasets.image_folder(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no images"):
        tfpar.datasets.image_folder(str(tmp_path))


def test_load_by_name(tmp_path):
    (x, _), _ = tfpar.datasets.load("digits")
    assert x.shape == (1438, 64)
    (x, _), _ = tfpar.datasets.load("reversal")
    assert isinstance(x, list) and len(x) == 2
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 2)), y=np.zeros(10))
    (x, _), _ = tfpar.datasets.load(f"npz:{tmp_path / 'd.npz'}")
    assert x.shape == (8, 2)
    with pytest.raises(ValueError, match="Unknown dataset 'mnist'. Use one of: digits, reversal"):
        tfpar.datasets.load("mnist")
