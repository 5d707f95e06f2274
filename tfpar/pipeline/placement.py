"""Placing a Keras model's layers on devices, as contiguous stages.

A model (Sequential or functional; a nested model counts as one layer) is
read as its layers in topological order. `stage_sizes` splits that order
into stages; `device_function` makes each layer's variables on its stage's
device when the model is recreated; `build_stages` cuts the recreated model
into one sub-model per stage, sharing its layers. A tensor that crosses
stage boundaries (a skip connection, a second input) is carried to each
stage that consumes it, on that stage's device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import tensorflow as tf

from tfpar.pipeline import costs as costs_lib
from tfpar import internals
from tfpar.pipeline import partition as partition_lib
from tfpar import replica
from tfpar.table import format_table


@dataclasses.dataclass
class Stage:
    """One stage: a sub-model of consecutive layers, run on one device.

    `input_keys` / `output_keys` name the tensors that cross its boundary
    (ids of the full model's symbolic tensors), in the sub-model's order.
    """

    index: int
    device: str
    model: keras.Model
    input_keys: list[int]
    output_keys: list[int]
    layer_names: list[str]


@dataclasses.dataclass
class Graph:
    """A model's layer graph cut into stages, ready to run."""

    stages: list[Stage]
    input_keys: list[int]
    output_keys: list[int]
    output_struct: object
    view: keras.Model


def functional_view(model: keras.Model) -> keras.Model:
    """The model as a functional graph (a Sequential's layers, unchanged).

    Raises:
      ValueError: a subclassed or unbuilt model, which has no layer graph.
    """
    if isinstance(model, keras.Sequential):
        try:
            # One output, as a tensor, not a list of one: a Sequential's
            # call returns its tensor, and so must the pipeline's.
            return keras.Model(model.inputs, model.outputs[0], name=model.name)
        except (AttributeError, ValueError) as error:
            raise _no_graph(model, "it is not built from an Input") from error
    if internals.is_functional(model):
        return model
    raise _no_graph(model, "it is a subclassed model")


def operations(model: keras.Model) -> list:
    """The model's layers and ops in topological order, inputs left out.

    The order follows each chain of layers to its end before starting
    another (`partition.chain_order`), so parallel branches such as an
    encoder and a decoder stay contiguous and a split can separate them.
    Besides layers, a functional graph holds plain ops: those Keras adds
    itself (an Embedding's `mask_zero` mask is a `NotEqual`) and
    `keras.ops` calls on symbolic tensors.
    """
    view = functional_view(model)
    ops = [op for op in view.operations if not isinstance(op, keras.layers.InputLayer)]
    if _shared(ops):
        return ops  # build_stages rejects shared layers with a clear error
    producer = {id(t): index for index, op in enumerate(ops) for t in _flat(op.output)}
    inputs_of = [
        sorted({producer[id(t)] for t in _flat(op.input) if id(t) in producer}) for op in ops
    ]
    return [ops[index] for index in partition_lib.chain_order(inputs_of)]


def layers(model: keras.Model) -> list:
    """The layers that stages are balanced over, in `operations` order.

    Plain ops (no weights) are not counted: `balance` lists and
    `describe_placement` speak of layers only, and each op runs in the stage
    of the first layer that reads its result (`op_stages`).
    """
    return [op for op in operations(model) if isinstance(op, keras.layers.Layer)]


def op_stages(ops: Sequence, sizes: Sequence[int]) -> list[int]:
    """The stage of each op in `ops` (`operations` order) under `sizes`
    layers per stage: a layer's by the count, a plain op's the earliest
    stage that reads its result (the last layer's before it if none does)."""
    layer_stage = iter(_stage_index(sizes))
    stages = [next(layer_stage) if isinstance(op, keras.layers.Layer) else None for op in ops]
    preceding, last = [], 0
    for stage in stages:
        last = last if stage is None else stage
        preceding.append(last)
    consumers = {}
    for index, op in enumerate(ops):
        for tensor in _flat(op.input):
            consumers.setdefault(id(tensor), []).append(index)
    for index in reversed(range(len(ops))):  # consumers come later in the order
        if stages[index] is None:
            readers = [stages[j] for t in _flat(ops[index].output) for j in consumers.get(id(t), [])]
            stages[index] = min(readers) if readers else preceding[index]
    return stages


def stage_sizes(
    model: keras.Model,
    num_stages: int,
    balance,
    *,
    device_speeds: Sequence[float] | None = None,
) -> list[int]:
    """How many consecutive layers each stage gets.

    Args:
      balance: "params" | "flops" | "time" (balance that cost) or an explicit
        list of layer counts per stage.
    """
    ops = layers(model)
    if not isinstance(balance, str):
        return partition_lib.check_sizes(balance, len(ops), num_stages)
    costs = costs_lib.layer_costs(ops, balance)
    return partition_lib.partition(costs, num_stages, device_speeds=device_speeds)


def device_function(model: keras.Model, devices: Sequence[str], sizes: Sequence[int]):
    """A `clone_function` that builds each layer on its stage's device."""
    device_of = _device_of(model, devices, sizes)

    def clone(layer):
        with tf.device(device_of.get(layer.name, devices[0])):
            if isinstance(layer, keras.Model):
                return keras.models.clone_model(layer, clone_function=replica.clone_layer, recursive=True)
            twin = replica.clone_layer(layer)
            if isinstance(model, keras.Sequential) and _built_lazily(twin, layer):
                # A layer that makes its sublayers in __init__ and has no
                # build() gets their variables on its first call; a
                # Sequential calls it outside this scope, so call it here.
                twin.compute_output_spec(layer.input)
            return twin

    return clone


def call_function(model: keras.Model, devices: Sequence[str], sizes: Sequence[int]):
    """A `call_function` for `clone_model` that calls each cloned layer of a
    functional model under its stage's device: variables that a layer
    creates on its first call (sublayers made in __init__) land there too."""
    if isinstance(model, keras.Sequential):
        return None  # clone_model takes none for Sequential; `clone` builds
    device_of = _device_of(model, devices, sizes)

    def call(layer, *args, **kwargs):
        with tf.device(device_of.get(layer.name, devices[0])):
            return layer(*args, **kwargs)

    return call


def _device_of(model: keras.Model, devices: Sequence[str], sizes: Sequence[int]) -> dict:
    """Layer or op name -> its stage's device."""
    ops = operations(model)
    return {op.name: devices[stage] for op, stage in zip(ops, op_stages(ops, sizes))}


def _built_lazily(twin, layer) -> bool:
    return layer.built and len(twin.weights) < len(layer.weights)


def check_devices(graph: "Graph") -> None:
    """Raises unless every variable of each stage lives on its device.

    Raises:
      ValueError: variables placed elsewhere (named, with their devices).
    """
    misplaced = [
        f"{variable.path} on {variable.value.device} (stage {stage.index}: {stage.device})"
        for stage in graph.stages for variable in stage.model.variables
        if not _is_on(variable.value.device, stage.device)
    ]
    if misplaced:
        raise ValueError(
            "Each layer's variables must live on its stage's device. Received "
            f"variables placed elsewhere: {misplaced[:5]}{' ...' if len(misplaced) > 5 else ''}. "
            "A layer that creates variables outside build() or its first call "
            "cannot be placed; give it a build() method that builds its sublayers."
        )


def build_stages(model: keras.Model, devices: Sequence[str], sizes: Sequence[int]) -> Graph:
    """Cuts a (placed) model into one sub-model per stage.

    Raises:
      ValueError: a layer used more than once, which a split cannot place.
    """
    view = functional_view(model)
    ops = operations(view)
    _check_not_shared(ops)
    stage_of_op = op_stages(ops, sizes)
    produced = {}  # tensor key -> stage that makes it (-1: a model input)
    for tensor in view.inputs:
        produced[id(tensor)] = -1
    for op, stage in zip(ops, stage_of_op):
        for tensor in _flat(op.output):
            produced[id(tensor)] = stage
    output_keys = [id(t) for t in view.outputs]
    needed_after = {}  # tensor key -> last stage that consumes it
    for op, stage in zip(ops, stage_of_op):
        for tensor in _flat(op.input):
            needed_after[id(tensor)] = max(needed_after.get(id(tensor), -1), stage)
    tensors = {id(t): t for op in ops for t in _flat(op.input) + _flat(op.output)}
    tensors.update({id(t): t for t in view.inputs})
    stages = []
    for index, device in enumerate(devices):
        members = [op for op, s in zip(ops, stage_of_op) if s == index]
        inputs = _unique(
            id(t) for op in members for t in _flat(op.input) if produced[id(t)] != index
        )
        outputs = [
            key for key, s in produced.items()
            if s == index and (needed_after.get(key, -1) > index or key in output_keys)
        ]
        sub_model = keras.Model(
            [tensors[k] for k in inputs], [tensors[k] for k in outputs],
            name=f"{view.name}_stage_{index}",
        )
        stages.append(Stage(index, device, sub_model, inputs, outputs,
                            [op.name for op in members if isinstance(op, keras.layers.Layer)]))
    struct = internals.output_structure(view)
    return Graph(stages, [id(t) for t in view.inputs], output_keys, struct, view)


@dataclasses.dataclass
class Placement:
    """Which layers run where: returned and printed by `describe_placement`."""

    rows: list[tuple]  # ([replica,] stage, device, first..last layer, layers, params, flops)
    replicas: bool = False  # rows start with the replica (pipelines trained data parallel)

    def __str__(self) -> str:
        header = ("stage", "device", "layers", "count", "params", "est. FLOPs/sample")
        return format_table(self.rows, ("replica",) * self.replicas + header, align="left")


def placement_table(model: keras.Model, groups: Sequence[Sequence[str]],
                    sizes: Sequence[int], replicas: Sequence[int] | None = None) -> Placement:
    """The placement of `model` with `sizes` layers per stage on each group
    of devices (one group per pipeline replica): a replica x stage grid.
    `replicas` numbers the groups (default 0, 1, ...; a worker's own
    replica across workers); the replica column shows when there are
    several replicas or they are numbered."""
    ops = layers(model)
    rows = []
    shown = replicas is not None or len(groups) > 1
    for replica, devices in zip(replicas if replicas is not None else range(len(groups)), groups):
        start = 0
        for index, (device, size) in enumerate(zip(devices, sizes)):
            members = ops[start : start + size]
            start += size
            span = members[0].name if size == 1 else f"{members[0].name} .. {members[-1].name}"
            rows.append((replica,) * shown + (
                index, device, span, size,
                f"{sum(costs_lib.params(op) for op in members):,}",
                f"{sum(costs_lib.flops(op) for op in members):,}",
            ))
    return Placement(rows, replicas=shown)


def _is_on(actual: str, wanted: str) -> bool:
    """Whether a full device name (job, task, type, index) is the device a
    stage asked for; the parts the stage leaves out match anything."""
    have, want = tf.DeviceSpec.from_string(actual), tf.DeviceSpec.from_string(wanted)
    return ((have.device_type or "").upper() == (want.device_type or "CPU").upper()
            and (have.device_index or 0) == (want.device_index or 0)
            and want.job in (None, have.job) and want.task in (None, have.task))


def _stage_index(sizes: Sequence[int]) -> list[int]:
    return [stage for stage, size in enumerate(sizes) for _ in range(size)]


def _shared(ops) -> list[str]:
    """Names of layers used more than once (a call each: an inbound node each)."""
    return [op.name for op in ops if internals.inbound_node_count(op) > 1]


def _check_not_shared(ops) -> None:
    # A shared layer's uses could fall in different stages, and one layer's
    # variables live on one device.
    shared = _shared(ops)
    if shared:
        raise ValueError(
            f"Layers used more than once (shared) cannot be split into stages. "
            f"Received a model that reuses: {shared}. Give each use its own layer."
        )


def _flat(structure) -> list:
    return [t for t in keras.tree.flatten(structure) if isinstance(t, keras.KerasTensor)]


def _unique(keys) -> list:
    seen = []
    for key in keys:
        if key not in seen:
            seen.append(key)
    return seen


def _no_graph(model, why: str) -> ValueError:
    return ValueError(
        f"Model splitting needs a Sequential or functional model whose layers "
        f"form a graph; {model.name!r} cannot be split because {why}. Build it "
        "with keras.Input(...) and the functional API (a nested model counts "
        "as one layer), or use a data-parallel strategy."
    )
