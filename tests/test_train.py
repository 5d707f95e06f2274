"""The training binary, run in-process on its default job (fewer epochs)."""

import pytest
from absl import app, flags

from tfpar import train


def run(argv):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["tfpar.train", *argv])
    train.main(["tfpar.train"])


def test_default_job_trains_digits_and_saves(tmp_path, capsys):
    path = tmp_path / "digits.keras"
    run(["--epochs=12", f"--save={path}"])
    out = capsys.readouterr().out
    accuracy = float(out.split("held-out accuracy: ")[1].split()[0])
    assert accuracy >= 0.9  # 12 epochs; the full default (30) reaches >= 0.95
    assert path.exists()


@pytest.mark.parametrize("argv, message", [
    (["--batch_size=0"], "--batch_size must be >= 1. Received: 0"),
    (["--learning_rate=-1"], "--learning_rate must be > 0"),
    (["--save=/tmp/model.h5"], "--save must end in .keras"),
])
def test_bad_flags_are_rejected_before_training(argv, message):
    with pytest.raises(app.UsageError, match=message):
        run(argv)


def test_gpipe_flags_train_and_print_the_placement(capsys):
    run(["--strategy=gpipe", "--devices=2", "--microbatches=2", "--epochs=2"])
    out = capsys.readouterr().out
    assert "est. FLOPs/sample" in out and "held-out accuracy" in out
