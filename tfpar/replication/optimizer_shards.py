"""ZeRO-1: each replica holds the optimizer state of its share of the weights.

`DataParallel(shard="optimizer")` keeps the weights replicated, as data
parallel does, but not the optimizer state (Adam's two moments, any slot):
each weight has one owner replica, which alone holds that weight's slots,
on its device, and alone computes its update (Rajbhandari et al., ZeRO,
2020, stage 1). A step, in each replica:

1. the replicas' gradients are summed as without sharding (all-reduce,
   with the strategy's compression), then clipped by tfpar's optimizer twin
   (a global norm sees every gradient, as on one device);
2. the owner updates its weights with the user's optimizer class and
   configuration, on copies of them on its device (`update_step`, Keras'
   own per-weight rule: every Keras optimizer, weight by weight, exact);
3. one all-gather (TensorFlow's collective) brings each owner's updated
   weights to every replica, which writes them into its copy.

Shares are whole weights, balanced by bytes (largest first onto the
least-loaded replica): Keras' per-weight rules (clipnorm, weight-decay
exclusions, Adafactor's factored moments, LAMB's trust ratio) stay what
they are. A weight larger than the others' sum makes its owner the
bottleneck (`OptimizerShards.bytes_per_replica` shows the shares).

Example:
    >>> strategy = tfpar.strategies.DataParallel(2, shard="optimizer")
    >>> balance([400, 100, 300, 200], 2)  # owner of each weight
    [0, 0, 1, 1]
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfpar.comm.powersgd import PowerSGD
from tfpar.core import internals, replica

# tfpar's optimizer twin clips, decays, accumulates and averages (EMA)
# before the shards update; a shard only runs each weight's update rule,
# so it builds no accumulators or averages of its own.
_DONE_BY_THE_TWIN = {"use_ema": False, "gradient_accumulation_steps": None}


LEVELS = (None, "optimizer")


def check_shard(shard, compression) -> None:
    """Raises ValueError unless `shard` is a level tfpar runs with this
    compression.

    Example:
        >>> check_shard("weights", None)
        Traceback (most recent call last):
        ...
        ValueError: shard must be one of [None, 'optimizer']: "optimizer" is ZeRO-1 (each replica holds the optimizer state of its share of the weights); sharding gradients and weights (ZeRO-2, ZeRO-3) is not in tfpar yet. Received: shard='weights'.
    """
    if shard not in LEVELS:
        raise ValueError(
            f"shard must be one of {list(LEVELS)}: \"optimizer\" is ZeRO-1 (each replica holds the "
            "optimizer state of its share of the weights); sharding gradients and weights "
            f"(ZeRO-2, ZeRO-3) is not in tfpar yet. Received: shard={shard!r}.")
    if shard is not None and isinstance(compression, PowerSGD):
        raise ValueError(
            f"shard={shard!r} with compression={compression!r}: PowerSGD keeps error feedback for "
            "every weight on every replica and sums low-rank factors, which sharded state does "
            "not pair with. Use compression=None, 'fp16' or 'bf16' with shard, or no shard.")


def balance(sizes, replicas: int) -> list[int]:
    """The owner replica of each weight: largest first, onto the replica
    holding the fewest bytes (the first of equals)."""
    loads, owners = [0] * replicas, [0] * len(sizes)
    for index in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        owner = loads.index(min(loads))
        owners[index] = owner
        loads[owner] += sizes[index]
    return owners


class OptimizerShards:
    """The replicas' shares of an optimizer's state, and the sharded update.

    Args:
      optimizer: the caller's optimizer (its class and configuration).
      variables: the trainable weights, in the strategy's scope.
      strategy: the one-host data-parallel strategy.
    """

    def __init__(self, optimizer: keras.optimizers.Optimizer, variables, strategy: tf.distribute.Strategy):
        self.variables = list(variables)
        devices = list(strategy.extended.worker_devices)
        sizes = [v.shape.num_elements() * tf.as_dtype(v.dtype).size for v in self.variables]
        self.owners = balance(sizes, len(devices))
        self.owned = [[k for k, o in enumerate(self.owners) if o == r] for r in range(len(devices))]
        self.bytes_per_replica = [sum(sizes[k] for k in mine) for mine in self.owned]
        config = optimizer.get_config()
        config.update({k: v for k, v in _DONE_BY_THE_TWIN.items() if k in config})
        if tf.distribute.has_strategy():
            raise RuntimeError("OptimizerShards are made outside the strategy's scope, so that "
                               "each share's variables live on its replica's device alone.")
        self.shadows, self.optimizers = [], []
        for device, mine in zip(devices, self.owned):
            with tf.device(device):
                shadows = [keras.Variable(np.asarray(self.variables[k].numpy()), trainable=False,
                                          name=f"shard_{self.variables[k].name}") for k in mine]
                shard = type(optimizer).from_config(config)
                shard.build(shadows)
            self.shadows.append(shadows)
            self.optimizers.append(shard)

    def update(self, grads, variables, learning_rate, iterations) -> None:
        """In each replica: its weights' update from their summed `grads`
        (of `variables`, in any order), then every replica's updated weights
        written into this replica's copies."""
        by_weight = {id(v): g for g, v in zip(grads, variables)}
        grads = [by_weight.get(id(v)) for v in self.variables]
        context = tf.distribute.get_replica_context()
        r = tf.get_static_value(context.replica_id_in_sync_group)
        shard, shadows, mine = self.optimizers[r], self.shadows[r], self.owned[r]
        shard.iterations.assign(iterations)  # the bias correction and schedules of one device
        for shadow, k in zip(shadows, mine):
            shadow.assign(self.variables[k].value)  # this replica's copy, as it is now
            if grads[k] is not None:
                shard.update_step(grads[k], shadow, learning_rate)
        updated = self._gathered(context, r)
        context.merge_call(_write, args=([self.variables[k] for k in updated], list(updated.values())))

    def _gathered(self, context, r: int) -> dict:
        """Every weight's updated value, from its owner, by one all-gather
        per dtype of each replica's share (padded to the largest share)."""
        values = {}
        for dtype in sorted({v.dtype for v in self.variables}, key=str):
            lengths = [[self.variables[k].shape.num_elements() for k in mine
                        if self.variables[k].dtype == dtype] for mine in self.owned]
            top = max(sum(n) for n in lengths)
            if top == 0:
                continue
            mine = [s for s, k in zip(self.shadows[r], self.owned[r]) if self.variables[k].dtype == dtype]
            flat = tf.concat([tf.reshape(s.value, [-1]) for s in mine] + [tf.zeros([0], dtype)], 0)
            flat = tf.pad(flat, [[0, top - sum(lengths[r])]])
            rows = context.all_gather(flat[None], axis=0)
            for owner, shares in enumerate(self.owned):
                start = 0
                for k in (k for k in shares if self.variables[k].dtype == dtype):
                    n = self.variables[k].shape.num_elements()
                    values[k] = tf.reshape(rows[owner, start:start + n], self.variables[k].shape)
                    start += n
        return dict(sorted(values.items()))

    def load(self, optimizer: keras.optimizers.Optimizer) -> None:
        """Takes each share's state from a built optimizer over all the
        weights (the caller's, before training)."""
        for (shard_variable, full_variable) in self._pairs(optimizer):
            shard_variable.assign(np.asarray(full_variable.numpy()))

    def store(self, optimizer: keras.optimizers.Optimizer) -> None:
        """Writes every share's state into an optimizer over all the weights
        (the caller's, after training), building it if needed."""
        if not optimizer.built:
            optimizer.build(self.variables)
        for (shard_variable, full_variable) in self._pairs(optimizer):
            full_variable.assign(np.asarray(shard_variable.numpy()))

    def _pairs(self, optimizer) -> list:
        """(a shard's slot, the full optimizer's slot of the same weight)."""
        weights = len(self.variables)
        full_keys = replica.slot_keys(optimizer, internals.optimized_variables(optimizer), weights)
        position = {key: i for i, key in enumerate(full_keys) if isinstance(key, tuple)}
        pairs = []
        for shard, shadows, mine in zip(self.optimizers, self.shadows, self.owned):
            keys = replica.slot_keys(shard, shadows, max(len(shadows), 1))
            for variable, key in zip(shard.variables, keys):
                if isinstance(key, tuple):  # a weight's slot; the shard's own are the twin's
                    pairs.append((variable, optimizer.variables[position[(mine[key[0]], key[1])]]))
        return pairs


def _write(strategy, variables, values) -> None:
    # In cross-replica context: each replica's copy takes its replica's value
    # (the same everywhere: the owner's, all-gathered).
    for variable, value in zip(variables, values):
        strategy.extended.update(variable.value, lambda copy, new: copy.assign(new), args=(value,),
                                 group=False)
