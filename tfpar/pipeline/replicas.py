"""Pipeline replicas trained data parallel: device groups, and each stage's
gradient all-reduce over TensorFlow's collective ops.

With R replicas of a K-stage pipeline, the devices are read as R groups of K
consecutive devices (`groups`): stage s of replica r runs on
`devices[r * K + s]`. After its last backward, stage s of every replica sums
its gradients with stage s of the others (`StageAllReduce`), on the stage's
own device with TensorFlow's `CollectiveReduce`: no gather to one device, and no wait
for the other stages. The members are the replicas in this process, or one
replica per worker of a multi-worker job (TensorFlow's collective runtime
then carries the sum between processes over gRPC).

IndexedSlices (embedding lookups) are gathered instead (`CollectiveGather`)
and combined as one device would have computed them
(`microbatch.combine_lookup`: per sample or made inside the model, as the
step's graph says), so Adam and RMSprop see the same sparse update.

Example:
    >>> groups(["/cpu:0", "/cpu:1", "/cpu:2", "/cpu:3"], 2)
    [['/cpu:0', '/cpu:1'], ['/cpu:2', '/cpu:3']]
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import keras
import tensorflow as tf

from tfpar.core import lookups, microbatch

# Group and instance keys of tfpar's collectives: far above the ones
# tf.distribute hands out in the same process, which count up from 1.
# Every worker makes its pipelines and their collectives in the same order,
# so the same collective gets the same keys in each process.
_KEYS = itertools.count(1 << 24)


def groups(devices: Sequence[str], replicas: int) -> list[list[str]]:
    """`devices` as `replicas` groups of consecutive devices, one per replica.

    Raises:
      ValueError: the device count is not a multiple of `replicas`.
    """
    devices = list(devices)
    if len(devices) % replicas:
        raise ValueError(
            f"data_parallel={replicas} reads the devices as {replicas} equal groups, one "
            f"pipeline replica each, so their count must be a multiple of {replicas}. "
            f"Received {len(devices)} devices: {devices}. Give {replicas} x (stages) devices."
        )
    size = len(devices) // replicas
    return [devices[r * size:(r + 1) * size] for r in range(replicas)]


class StageAllReduce:
    """Sums one stage's gradients across the members of a replica group.

    Args:
      group_size: how many members the group has (replicas in this
        process, or workers).
      devices: the stage's device of each member that runs in this process
        (all of them in one process; this worker's alone across workers).
      timeout_seconds: how long a collective waits for a missing member
        before failing (None: forever), as MultiWorker's timeout.
    """

    def __init__(self, group_size: int, devices: Sequence[str], timeout_seconds: float | None = None):
        self.group_size = group_size
        self.devices = list(devices)
        self.timeout = float(timeout_seconds or 0)
        self.group_key = next(_KEYS)
        self._instance_keys = {}

    def _key(self, slot) -> int:
        # One key per collective, the same on every retrace.
        if slot not in self._instance_keys:
            self._instance_keys[slot] = next(_KEYS)
        return self._instance_keys[slot]

    def __call__(self, grads_per_member: list[list], batch, after: list | None = None) -> list[list]:
        """Sums each member's gradients with the other members'.

        Args:
          grads_per_member: for each local member, its gradient of each of
            the stage's weights (a tensor, IndexedSlices or None), in the
            same order for every member.
          batch: the step's input tensors, which a lookup's ids depend on
            when they are per sample (`microbatch.combine_lookup`).
          after: for each local member, tensors its collectives wait for.

        Returns:
          For each local member, the summed gradients, on its device.
        """
        out = []
        for index, (grads, device) in enumerate(zip(grads_per_member, self.devices)):
            deps = after[index] if after else []
            with tf.device(device), tf.control_dependencies(deps):
                out.append(self._reduce(grads, batch))
        return out

    def _reduce(self, grads: list, batch) -> list:
        result = list(grads)
        dense = {}  # dtype -> positions of its dense gradients, packed together
        for position, grad in enumerate(grads):
            if isinstance(grad, tf.IndexedSlices):
                result[position] = self._gather_slices(grad, position, batch)
            elif grad is not None:
                dense.setdefault(grad.dtype, []).append(position)
        for dtype, positions in sorted(dense.items(), key=lambda item: item[0].name):
            parts = [grads[p] for p in positions]
            flat = tf.concat([tf.reshape(g, [-1]) for g in parts], axis=0)
            summed = self._collective_sum(flat, ("dense", dtype.name))
            pieces = tf.split(summed, [g.shape.num_elements() for g in parts])
            for p, g, piece in zip(positions, parts, pieces):
                result[p] = tf.reshape(piece, tf.shape(g))
        return result

    # The V1 collective ops, whose group is fixed when the graph is built:
    # measured on TensorFlow 2.21, the V2 ops (keys as tensors) time out
    # between logical devices of one process, where V1 completes.
    def _collective_sum(self, tensor, slot):
        return tf.raw_ops.CollectiveReduce(
            input=tensor, group_size=self.group_size, group_key=self.group_key,
            instance_key=self._key(slot), merge_op="Add", final_op="Id", subdiv_offsets=[0],
            timeout_seconds=self.timeout)

    def sum(self, tensor, slot):
        """A plain all-reduce sum of `tensor` over the group (the batch's
        sample count, the loss), on the first local member's device."""
        with tf.device(self.devices[0]):
            return self._collective_sum(tensor, ("sum", slot))

    def _gather(self, tensor, slot):
        return tf.raw_ops.CollectiveGather(
            input=tensor, group_size=self.group_size, group_key=self.group_key,
            instance_key=self._key(slot), shape=tf.TensorShape([None]).concatenate(tensor.shape[1:]),
            timeout_seconds=self.timeout)

    def _gather_parts(self, tensor, slot) -> list:
        """Every member's `tensor`, in member order. Their first dimensions
        may differ, and a collective gathers equal shapes: each is padded to
        the longest, gathered, and cut back."""
        count = tf.shape(tensor)[:1]
        counts = self._gather(count, (slot, "count"))
        pad = tf.reduce_max(counts) - count[0]
        padded = tf.concat([tensor, tf.zeros(tf.concat([[pad], tf.shape(tensor)[1:]], 0), tensor.dtype)],
                           axis=0)
        parts = tf.split(self._gather(padded, (slot, "rows")), self.group_size)
        return [part[: counts[m]] for m, part in enumerate(parts)]

    def gather_rows(self, structure, slot):
        """Every member's rows of each tensor in `structure`, side by side in
        member order (a worker's batch part -> the global batch)."""
        if structure is None:
            return None
        with tf.device(self.devices[0]):
            flat = [tf.concat(self._gather_parts(t, (slot, i)), axis=0)
                    for i, t in enumerate(keras.tree.flatten(structure))]
        return keras.tree.pack_sequence_as(structure, flat)

    def _gather_slices(self, grad: tf.IndexedSlices, position: int, batch) -> tf.IndexedSlices:
        # Members' slices differ in length (their samples' lookups).
        values = self._gather_parts(grad.values, ("values", position))
        indices = self._gather_parts(grad.indices, ("indices", position))
        # The kind is read from this member's own ids (every member's graph
        # is the same, so all decide alike).
        per_sample = lookups.depends_on_batch(grad.indices, list(batch))
        return microbatch.combine_slices(
            [tf.IndexedSlices(v, i, grad.dense_shape) for v, i in zip(values, indices)],
            per_sample=per_sample)
