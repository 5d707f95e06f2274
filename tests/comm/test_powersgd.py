"""compression="powersgd": gradient matrices all-reduced as rank-r factors
with error feedback and warm start (Vogels et al., 2019)."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpar.strategies import DataParallel, PowerSGD
import tfpar

import multi_worker_job
from conftest import build_mlp, compile_model, make_data, weights_of

N, M, RANK = 6, 5, 2


def reduce_twice(strategy, matrices, biases):
    """Two all-reduces of (matrix, bias) per replica, as an optimizer makes
    them; returns each step's per-replica results."""
    prepared = [keras.Variable(np.zeros((N, M), "float32")), keras.Variable(np.zeros(M, "float32"))]
    hook = strategy.communication_hook
    with strategy.scope():
        hook.prepare(prepared)

    @tf.function
    def step(m, b):
        def replica_fn(m, b):
            return hook(list(zip([m, b], prepared)))

        return strategy.run(replica_fn, args=(m, b))

    results = []
    for t in range(2):
        m = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(matrices[t][ctx.replica_id_in_sync_group]))
        b = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(biases[t][ctx.replica_id_in_sync_group]))
        results.append([[np.array(v) for v in strategy.experimental_local_results(r)]
                        for r in step(m, b)])
    return results


def test_two_steps_equal_the_algorithm_computed_in_numpy():
    rng = np.random.default_rng(5)
    matrices = rng.normal(size=(2, 2, N, M)).astype("float32")  # step, replica
    biases = rng.normal(size=(2, 2, M)).astype("float32")
    strategy = DataParallel(2, compression=PowerSGD(rank=RANK))
    results = reduce_twice(strategy, matrices, biases)
    # The paper's algorithm in float64: Q starts at the first step's Q
    # (any start is valid; the same on every replica).
    q = np.random.default_rng(0).standard_normal((M, RANK))
    errors = np.zeros((2, N, M))
    for t in range(2):
        with_error = matrices[t] + errors
        p, _ = np.linalg.qr(sum(with_error[r] @ q for r in range(2)))
        q = sum(with_error[r].T @ p for r in range(2))
        approximation = p @ q.T
        errors = with_error - approximation / 2
        matrix_results, bias_results = results[t]
        for replica in range(2):  # every replica gets the same sum
            np.testing.assert_allclose(matrix_results[replica], approximation, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(bias_results[replica], biases[t].sum(0), rtol=1e-6)
        # The approximation is not the sum: compression really happened.
        assert np.max(np.abs(approximation - matrices[t].sum(0))) > 0.1


def test_a_sum_of_rank_r_is_reproduced_exactly():
    rng = np.random.default_rng(6)
    u, v = rng.normal(size=(N, RANK)), rng.normal(size=(RANK, M))
    # Each replica's gradient is a multiple of one rank-2 matrix.
    matrices = np.stack([np.stack([u @ v, 0.5 * u @ v])] * 2).astype("float32")
    biases = np.zeros((2, 2, M), "float32")
    results = reduce_twice(DataParallel(2, compression="powersgd"), matrices, biases)
    np.testing.assert_allclose(results[0][0][0], 1.5 * u @ v, rtol=1e-4, atol=1e-5)


def test_the_collectives_carry_the_factors_not_the_matrices():
    strategy = DataParallel(2, all_reduce="ring", compression=PowerSGD(rank=RANK))
    n, m = 64, 32
    weights = [keras.Variable(np.zeros((n, m), "float32")), keras.Variable(np.zeros(m, "float32"))]
    hook = strategy.communication_hook
    with strategy.scope():
        hook.prepare(weights)

    @tf.function
    def step():
        def replica_fn():
            return hook(list(zip([tf.ones((n, m)), tf.ones(m)], weights)))

        return strategy.run(replica_fn)

    graph = step.get_concrete_function().graph
    sent = sum(op.inputs[0].shape.num_elements() for op in graph.get_operations()
               if op.type.startswith("CollectiveReduce"))
    # Per replica: P (n x r), then Q (m x r) with the bias, instead of n*m + m.
    assert sent == 2 * (n * RANK + m * RANK + m)
    assert (hook.sent_bytes, hook.raw_bytes) == (4 * (n * RANK + m * RANK + m), 4 * (n * m + m))


def test_trains_with_replicas_identical_and_close_to_uncompressed():
    x, y = make_data(512)
    fit = dict(batch_size=64, epochs=3, shuffle=False, verbose=0)
    plain = compile_model(build_mlp())
    plain_history = tfpar.fit_distributed(plain, x, y, strategy=DataParallel(2), **fit).history
    model = compile_model(build_mlp())
    history = tfpar.fit_distributed(model, x, y, strategy=DataParallel(2, compression="powersgd"),
                                    **fit).history
    differences = [np.max(np.abs(a - b)) for a, b in zip(weights_of(model), weights_of(plain))]
    assert max(differences) > 1e-4  # compressed: not the uncompressed run
    assert history["loss"][-1] < history["loss"][0]
    # Error feedback keeps it on course: the loss curve stays near the plain one.
    np.testing.assert_allclose(history["loss"], plain_history["loss"], rtol=0.05)


def test_checkpointing_warns_that_its_error_feedback_is_not_kept(tmp_path):
    x, y = make_data(64)
    model = compile_model(build_mlp())
    with pytest.warns(UserWarning, match=r"not PowerSGD's error feedback, which restarts from zero"):
        tfpar.fit_distributed(model, x, y, strategy=DataParallel(2, compression="powersgd"),
                              batch_size=32, epochs=1, verbose=0, shuffle=False,
                              checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=1)


def test_state_is_the_variables_whatever_the_order_of_same_shaped_gradients():
    # Two weights of one shape: each keeps its own Q and error feedback, so
    # summing them in the other order gives each the same result.
    strategy = DataParallel(2, compression=PowerSGD(rank=1))
    weights = [keras.Variable(np.zeros((N, M), "float32")) for _ in range(2)]
    hook = strategy.communication_hook
    rng = np.random.default_rng(7)
    grads = rng.normal(size=(2, 2, N, M)).astype("float32")  # weight, replica

    def summed(order):
        with strategy.scope():
            hook.prepare(weights)

        @tf.function
        def step(a, b):
            def replica_fn(a, b):
                pairs = [(a, weights[0]), (b, weights[1])]
                return hook([pairs[i] for i in order])

            return strategy.run(replica_fn, args=(a, b))

        values = [strategy.experimental_distribute_values_from_function(
            lambda ctx, w=w: tf.constant(grads[w][ctx.replica_id_in_sync_group])) for w in range(2)]
        results = []
        for _ in range(2):  # the second step reads the first's state
            out = step(*values)
            results.append({w: np.array(strategy.experimental_local_results(out[order.index(w)])[0])
                            for w in range(2)})
        return results

    forward, backward = summed([0, 1]), summed([1, 0])
    for a, b in zip(forward, backward):
        for w in range(2):
            np.testing.assert_allclose(a[w], b[w], rtol=1e-5, atol=1e-6)


def test_a_gradient_of_a_variable_without_state_is_an_error():
    strategy = DataParallel(2, compression="powersgd")
    hook = strategy.communication_hook
    with strategy.scope():
        hook.prepare([])
    stranger = keras.Variable(np.zeros((N, M), "float32"), name="stranger")

    @tf.function
    def step():
        return strategy.run(lambda: hook([(tf.ones((N, M)), stranger)]))

    with pytest.raises(ValueError, match=r"PowerSGD has no state for variable .*stranger"):
        step()


def test_plain_keras_in_the_scope_warns_that_it_runs_uncompressed():
    strategy = DataParallel(2, compression="powersgd")
    with strategy.scope():
        model = compile_model(build_mlp())
    x, y = make_data(64)
    with pytest.warns(UserWarning, match=r"runs uncompressed"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(compression="powersgd4"), r"compression must be one of \[None, 'fp16', 'bf16', 'powersgd'\]"),
    (dict(compression=PowerSGD), r"Received: compression=<class"),
])
def test_bad_compressions_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataParallel(2, **kwargs)


@pytest.mark.parametrize("rank", [0, -1, 1.5])
def test_a_rank_below_one_is_refused(rank):
    with pytest.raises(ValueError, match=rf"rank must be a whole number >= 1 \(PowerSGD.*rank={rank!r}"):
        PowerSGD(rank=rank)


JOB = """
import json, os, sys
import numpy as np
import tfpar  # launched with --compression=powersgd
import multi_worker_job as job

rank = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
model = job.model()
tfpar.fit_distributed(model, *job.data(), strategy="multi_worker", batch_size=32, epochs=2,
                      shuffle=False, verbose=0)
np.savez(os.path.join(sys.argv[1], f"weights_{rank}.npz"), *model.get_weights())
"""


def test_two_workers_compress_as_two_local_replicas_do(tmp_path):
    (tmp_path / "job.py").write_text(JOB)
    completed = subprocess.run(
        [sys.executable, "-m", "tfpar.launch", "-n", "2", "--threads-per-worker", "1",
         "--compression", "powersgd", "--", sys.executable, str(tmp_path / "job.py"), str(tmp_path)],
        cwd=multi_worker_job.ROOT, env=multi_worker_job.worker_env(), capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-4000:]
    weights = [list(np.load(tmp_path / f"weights_{r}.npz").values()) for r in (0, 1)]
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)  # workers stay bit-identical
    # The same algorithm over two replicas in one process.
    local = multi_worker_job.model()
    tfpar.fit_distributed(local, *multi_worker_job.data(), batch_size=32, epochs=2, shuffle=False,
                          verbose=0, strategy=DataParallel(2, compression="powersgd"))
    plain = multi_worker_job.model()
    tfpar.fit_distributed(plain, *multi_worker_job.data(), batch_size=32, epochs=2, shuffle=False,
                          verbose=0, strategy=DataParallel(2))
    for a, b in zip(weights[0], weights_of(local)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert max(np.max(np.abs(a - b)) for a, b in zip(weights_of(local), weights_of(plain))) > 1e-4
