"""ZeRO-1 and ZeRO-2: each replica holds the optimizer state of its share
of the weights and, at "gradients", only its share's summed gradient.

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

`shard="gradients"` (stage 2) replaces step 1's all-reduce of the dense
gradients by a reduce-scatter (`tfpar.comm.reduce_scatter`): each replica
receives the sum of only the gradients it owns, half an all-reduce's
traffic, and a global clipnorm adds the shares' squared norms across
replicas (one scalar all-reduce). With micro-batches, each micro-batch's
gradients are reduce-scattered as they are made, so the running sum a
replica keeps is its share's alone. Embedding gradients (`IndexedSlices`,
their rows only) are summed as without sharding and used by their owner.

Shares are whole weights, balanced by bytes (largest first onto the
least-loaded replica): Keras' per-weight rules (clipnorm, weight-decay
exclusions, Adafactor's factored moments, LAMB's trust ratio) stay what
they are. A weight larger than the others' sum makes its owner the
bottleneck (`OptimizerShards.bytes_per_replica` shows the shares).

Example:
    >>> strategy = tfpar.strategies.DataParallel(2, shard="gradients")
    >>> balance([400, 100, 300, 200], 2)  # owner of each weight
    [0, 0, 1, 1]
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfpar.comm.powersgd import PowerSGD
from tfpar.comm.reduce_scatter import reduce_scatter
from tfpar.core import internals, replica

# tfpar's optimizer twin clips, decays, accumulates and averages (EMA)
# before the shards update; a shard only runs each weight's update rule,
# so it builds no accumulators or averages of its own.
_DONE_BY_THE_TWIN = {"use_ema": False, "gradient_accumulation_steps": None}


LEVELS = (None, "optimizer", "gradients")


def check_shard(shard, compression, all_reduce: str = "auto") -> None:
    """Raises ValueError unless `shard` is a level tfpar runs with this
    compression and all-reduce.

    Example:
        >>> check_shard("weights", None)
        Traceback (most recent call last):
        ...
        ValueError: shard must be one of [None, 'optimizer', 'gradients']: "optimizer" is ZeRO-1 (each replica holds the optimizer state of its share of the weights), "gradients" ZeRO-2 (and only its share's summed gradient); sharding the weights (ZeRO-3) is not in tfpar yet. Received: shard='weights'.
    """
    if shard not in LEVELS:
        raise ValueError(
            f"shard must be one of {list(LEVELS)}: \"optimizer\" is ZeRO-1 (each replica holds the "
            "optimizer state of its share of the weights), \"gradients\" ZeRO-2 (and only its "
            "share's summed gradient); sharding the weights (ZeRO-3) is not in tfpar yet. "
            f"Received: shard={shard!r}.")
    if shard is not None and isinstance(compression, PowerSGD):
        raise ValueError(
            f"shard={shard!r} with compression={compression!r}: PowerSGD keeps error feedback for "
            "every weight on every replica and sums low-rank factors, which sharded state does "
            "not pair with. Use compression=None, 'fp16' or 'bf16' with shard, or no shard.")
    if shard == "gradients" and all_reduce == "reduce_to_one":
        raise ValueError(
            "shard='gradients' reduce-scatters the gradients with TensorFlow's collective ops, "
            "while all_reduce='reduce_to_one' sums them on one device. Use all_reduce='auto' or "
            "'ring' with shard='gradients'.")


def check_optimizer(shard, optimizer: keras.optimizers.Optimizer, microbatches: int) -> None:
    """Raises ValueError, before training, for an optimizer a level cannot
    shard (the caller's, as compiled).

    Example:
        >>> check_optimizer("gradients", keras.optimizers.SGD(gradient_accumulation_steps=2), 1)
        Traceback (most recent call last):
        ...
        ValueError: shard='gradients' with gradient_accumulation_steps=2: Keras accumulates every weight's gradient in a buffer on every replica, which is the gradient state ZeRO-2 shards. Use DataParallel(microbatches=2, shard='gradients') (the accumulation buffer is then sharded; each step takes the 2 batches as one), or shard='optimizer'.
    """
    if shard != "gradients" or optimizer is None:
        return
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    inner = optimizer.inner_optimizer if scaled else optimizer
    steps = inner.gradient_accumulation_steps
    if steps:
        raise ValueError(
            f"shard='gradients' with gradient_accumulation_steps={steps}: Keras accumulates every "
            "weight's gradient in a buffer on every replica, which is the gradient state ZeRO-2 "
            f"shards. Use DataParallel(microbatches={steps}, shard='gradients') (the accumulation "
            f"buffer is then sharded; each step takes the {steps} batches as one), or shard='optimizer'.")
    if scaled and microbatches > 1:
        raise ValueError(
            f"shard='gradients' with microbatches={microbatches} and a LossScaleOptimizer (mixed "
            "precision): the micro-batches' gradients are summed into each replica's share as they "
            "are made, and Keras' loss scaling checks for overflow in one replica's gradients "
            "only, which would then be one share. Use microbatches=1 or shard='optimizer' with "
            "mixed precision.")


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
      level: "optimizer" (ZeRO-1) or "gradients" (ZeRO-2: the dense
        gradients are reduce-scattered, `summed_shares`).
      wire_dtype: None, or the narrower floating dtype the reduce-scattered
        gradients travel in (the strategy's fp16 / bf16 compression).

    Attributes:
      scattered_bytes: what each replica hands one reduce-scatter (its
        whole dense gradient, padded; once a step, or once per micro-batch).
      gathered_bytes: what each replica receives from the weights'
        all-gather in a step (every share, padded to the largest).
    """

    def __init__(self, optimizer: keras.optimizers.Optimizer, variables, strategy: tf.distribute.Strategy,
                 level: str = "optimizer", wire_dtype: tf.DType | None = None):
        self.level, self.wire_dtype = level, wire_dtype
        self.scatters = level == "gradients"
        self.scattered_bytes = self.gathered_bytes = 0
        self.variables = list(variables)
        self._index = {id(v): k for k, v in enumerate(self.variables)}
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

    def summed_shares(self, grads, variables) -> list:
        """In each replica: the replicas' sum of each dense gradient this
        replica owns, None for the others', by one reduce-scatter per dtype
        (each owner's gradients side by side, padded to the largest share).

        Args:
          grads: dense gradients (none None), paired with `variables`.
          variables: the weights, in the same order on every replica.
        A narrower `wire_dtype` carries floating gradients, widened before
        they are added.
        """
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync
        r = tf.get_static_value(context.replica_id_in_sync_group)
        owners = [self.owners[self._index[id(v)]] for v in variables]
        summed = [None] * len(grads)
        handed = 0
        for dtype in sorted({tf.as_dtype(g.dtype) for g in grads}, key=str):
            shares = [[i for i, g in enumerate(grads) if tf.as_dtype(g.dtype) == dtype and owners[i] == j]
                      for j in range(replicas)]
            lengths = [sum(variables[i].shape.num_elements() for i in mine) for mine in shares]
            top = max(lengths)
            if top == 0:
                continue
            wire = self.wire_dtype
            send = wire if wire is not None and dtype.is_floating and dtype.size > wire.size else dtype
            rows = tf.stack([
                tf.pad(tf.concat([tf.reshape(tf.cast(grads[i], send), [-1]) for i in mine]
                                 + [tf.zeros([0], send)], 0), [[0, top - n]])
                for mine, n in zip(shares, lengths)])
            handed += replicas * top * send.size
            flat = tf.cast(reduce_scatter(rows) if send == dtype else
                           reduce_scatter(rows, sum_dtype=dtype), dtype)
            start = 0
            for i in shares[r]:
                n = variables[i].shape.num_elements()
                summed[i] = tf.reshape(flat[start:start + n], variables[i].shape)
                start += n
        # One assignment: the replicas trace this at once, in threads.
        self.scattered_bytes = handed
        return summed

    def elsewhere(self, variable) -> tf.Tensor:
        """What a replica hands the optimizer as the gradient of a weight
        another replica owns, in a micro-batched step whose shares are
        already summed: an empty tensor, which the update never reads (only
        the owner updates a weight) and a global norm does not count."""
        return tf.zeros([0], variable.dtype)

    def owns(self, variable) -> bool:
        """Whether this replica (in replica context) owns `variable`."""
        context = tf.distribute.get_replica_context()
        return self.owners[self._index[id(variable)]] == tf.get_static_value(context.replica_id_in_sync_group)

    def _gathered(self, context, r: int) -> dict:
        """Every weight's updated value, from its owner, by one all-gather
        per dtype of each replica's share (padded to the largest share)."""
        values, received = {}, 0
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
            received += len(self.owned) * top * tf.as_dtype(dtype).size
            for owner, shares in enumerate(self.owned):
                start = 0
                for k in (k for k in shares if self.variables[k].dtype == dtype):
                    n = self.variables[k].shape.num_elements()
                    values[k] = tf.reshape(rows[owner, start:start + n], self.variables[k].shape)
                    start += n
        self.gathered_bytes = received  # one assignment, as in summed_shares
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
