import os

import keras

from tfpar.cluster import chief


def test_non_chief_callbacks_write_to_a_removed_temporary_directory(tmp_path):
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"))
    board = keras.callbacks.TensorBoard(str(tmp_path / "logs"))
    other = keras.callbacks.History()
    with chief.only_chief_writes([checkpoint, board, other], is_chief=False):
        assert not checkpoint.filepath.startswith(str(tmp_path))
        assert checkpoint.filepath.endswith("best.keras")
        scratch = os.path.dirname(checkpoint.filepath)
        assert os.path.isdir(scratch) and os.path.dirname(board.log_dir) == scratch
    assert checkpoint.filepath == str(tmp_path / "best.keras")
    assert board.log_dir == str(tmp_path / "logs")
    assert not os.path.exists(scratch)


def test_the_chief_writes_where_asked(tmp_path):
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"))
    with chief.only_chief_writes([checkpoint], is_chief=True):
        assert checkpoint.filepath == str(tmp_path / "best.keras")
