"""The training binary, run in-process on its default job (fewer epochs)."""

import pytest
from absl import app, flags

from tfpar import train


@pytest.fixture(autouse=True)
def scratch_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --save writes tfpar_model.keras here


def run(argv):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["tfpar.train", *argv])
    train.main(["tfpar.train"])


def held_out_accuracy(out: str) -> float:
    return float(out.split("held-out accuracy: ")[1].split()[0])


def test_default_job_trains_digits_and_saves(tmp_path, capsys):
    run(["--epochs=6"])
    out = capsys.readouterr().out
    accuracy = held_out_accuracy(out)
    assert accuracy >= 0.9  # 6 epochs (measured 0.95); the full default (30) reaches >= 0.95
    assert "devices: " in out and "batch: global 64, per replica" in out
    saved = tmp_path / "tfpar_model.keras"
    assert f"saved model to tfpar_model.keras" in out and saved.exists()
    import keras

    restored = keras.models.load_model(saved)
    assert restored.count_params() == int(out.split("model: mlp, ")[1].split()[0].replace(",", ""))


def test_powersgd_stays_within_a_point_of_uncompressed(capsys):
    # A short run of the default job on 2 replicas, at a higher learning rate
    # so that 8 epochs get close to the end (measured: 0.958 against 0.964).
    # The full default job (4 replicas, 30 epochs): 0.989 both.
    job = ["--devices=2", "--epochs=8", "--learning_rate=0.003", "--save="]
    run(job)
    plain = held_out_accuracy(capsys.readouterr().out)
    run([*job, "--compression=powersgd"])
    out = capsys.readouterr().out
    assert "compression=PowerSGD(rank=2)" in out
    assert held_out_accuracy(out) >= plain - 0.01


@pytest.mark.parametrize("argv, message", [
    (["--batch_size=0"], "--batch_size=0: 0 is not a positive integer"),
    (["--learning_rate=-1"], "--learning_rate must be > 0"),
    (["--save=/tmp/model.h5"], "--save must end in .keras"),
    (["--devices=0"], "--devices=0: 0 is not a positive integer"),
    (["--devices=9"], "--devices: devices=9 asks for 9 device\\(s\\) but 4 are available"),
    (["--balance=3,x", "--strategy=split"], "--balance=3,x: --balance must be auto, params"),
    (["--schedule=1f1b"], "--schedule applies to --strategy=split or gpipe.*--strategy=mirrored"),
    (["--timeline=/tmp/t", "--strategy=split"], "--timeline records a pipeline.*--strategy=split"),
    (["--dataset=mnist"], "--dataset: Unknown dataset 'mnist'"),
    (["--model=transformer"], "--model=transformer does not fit --dataset=digits.*\\(64,\\).*--model=mlp"),
    (["--strategy=gpipe", "--devices=2", "--balance=1,1"], "--balance.*sum of balance: 2"),
    (["--strategy=gpipe", "--devices=2", "--microbatches=4", "--batch_size=30"],
     "--batch_size must be divisible by 1 replica\\(s\\) x 4 micro-batch\\(es\\) = 4. Received: 30"),
    (["--devices=2", "--batch_size=33"], "divisible by 2 replica.*Received: 33"),
    # Data parallel takes --microbatches too: per replica's share.
    (["--devices=2", "--microbatches=3"],
     "divisible by 2 replica\\(s\\) x 3 micro-batch\\(es\\) = 6. Received: 64"),
    (["--data_parallel=2"], "--data_parallel applies to --strategy=split or gpipe"),
    (["--strategy=gpipe", "--compression=powersgd"], "--compression applies to --strategy=mirrored"),
    (["--strategy=gpipe", "--shard=optimizer"], "--shard applies to --strategy=mirrored.*--strategy=gpipe"),
    (["--shard=optimizer", "--compression=powersgd"], "--shard=optimizer with --compression=powersgd"),
    (["--strategy=split", "--microbatches=8"], "--microbatches applies to --strategy=gpipe.*Received: --microbatches=8"),
    (["--strategy=split", "--schedule=zb1"], "--schedule applies to --strategy=gpipe"),
    (["--strategy=gpipe", "--devices=3", "--data_parallel=2"], "--data_parallel: data_parallel=2 .* Received 3 devices"),
    (["--strategy=gpipe", "--data_parallel=2", "--microbatches=4", "--batch_size=36"],
     "divisible by 2 replica\\(s\\) x 4 micro-batch\\(es\\) = 8. Received: 36"),
    (["--strategy=multi_worker", "--virtual_devices=2"], "--virtual_devices does not apply to --strategy=multi_worker"),
])
def test_bad_flags_are_rejected_before_training(argv, message):
    # absl's own checks (bounds, validators) when the flags are parsed; the
    # rest (devices, data, model) once they are known.
    with pytest.raises((app.UsageError, flags.IllegalFlagValueError), match=message):
        run(argv)


@pytest.mark.parametrize("level", ["optimizer", "gradients"])
def test_shard_flag_trains_with_the_state_in_shares(capsys, level):
    run(["--devices=2", "--epochs=2", f"--shard={level}", "--save="])
    out = capsys.readouterr().out
    assert f"shard='{level}'" in out and held_out_accuracy(out) > 0.5  # 0.1 is chance


def test_gpipe_flags_train_and_print_the_placement(capsys):
    run(["--strategy=gpipe", "--devices=2", "--microbatches=2", "--epochs=2"])
    out = capsys.readouterr().out
    assert "est. FLOPs/sample" in out and "held-out accuracy" in out


def test_hybrid_flags_train_two_pipeline_replicas(capsys):
    run(["--strategy=gpipe", "--data_parallel=2", "--microbatches=2", "--epochs=2"])
    out = capsys.readouterr().out
    assert "data_parallel=2" in out and "per replica 32 (2 replicas)" in out
    assert "replica  stage" in out and "held-out accuracy" in out


def test_transformer_on_reversal_pipelined_with_a_timeline(tmp_path, capsys):
    prefix = tmp_path / "step"
    run(["--dataset=reversal", "--strategy=gpipe", "--devices=2", "--microbatches=4",
         "--epochs=3", "--learning_rate=0.003", f"--timeline={prefix}"])
    out = capsys.readouterr().out
    assert "model: transformer" in out
    assert "per micro-batch 16 (4 micro-batches)" in out
    # The natural split: the encoder on stage 0, the decoder on stage 1.
    assert "encoder_embedding .. encoder_1_ff_norm" in out and "decoder_embedding .. logits" in out
    assert "measured bubble" in out and "the schedule's ideal 0.200" in out
    assert (tmp_path / "step.png").exists() and (tmp_path / "step.json").exists()
    accuracy = float(out.split("held-out accuracy: ")[1].split()[0])
    assert accuracy >= 0.9  # reversal is learnable: measured 1.0 after 3 epochs


def test_cnn_split_with_flagfile_and_tensorboard(tmp_path, capsys):
    flagfile = tmp_path / "job.flags"
    flagfile.write_text(f"--model=cnn\n--strategy=split\n--devices=2\n--epochs=1\n--batch_size=32\n"
                        f"--optimizer=sgd\n--learning_rate=0.05\n--tensorboard_dir={tmp_path / 'logs'}\n")
    run([f"--flagfile={flagfile}"])
    out = capsys.readouterr().out
    assert "model: cnn" in out and "batch: global 32, per replica 32 (1 replica)" in out
    assert "devices: /device:CPU:0, /device:CPU:1" in out
    assert any((tmp_path / "logs").rglob("events.out.tfevents*"))
    assert "held-out accuracy" in out
