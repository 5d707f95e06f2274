"""Placing a Keras model's layers on devices, as contiguous stages.

A model (Sequential or functional; a nested model counts as one layer) is
read as its layers in topological order. `stage_sizes` splits that order
into stages; `device_function` makes each layer's variables on its stage's
device when the model is recreated; `build_stages` cuts the recreated model
into one sub-model per stage, sharing its layers. A tensor that crosses
stage boundaries (a skip connection, a second input) is carried to each
stage that consumes it, on that stage's device.

The order is of uses (Keras nodes), not of layers: a layer called twice
(shared, such as a causal LM's token embedding that also projects its
output) is in the order twice, and each call runs in the stage where the
graph needs it. Its weights have one owner, the stage of its first use,
which holds the variables; a later stage that uses it reads them (across
devices, TensorFlow copies the value), and its gradient is the sum of every
use's, as on one device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import tensorflow as tf

from tfpar.core import in_place, internals, replica
from tfpar.core.table import format_table
from tfpar.pipeline import costs as costs_lib
from tfpar.pipeline import partition as partition_lib


@dataclasses.dataclass
class Stage:
    """One stage: a sub-model of consecutive layers, run on one device.

    `input_keys` / `output_keys` name the tensors that cross its boundary
    (ids of the full model's symbolic tensors), in the sub-model's order.
    `reads` are the trainable weights of shared layers that an earlier
    stage holds and this one uses too: its backward differentiates them
    (its `model.trainable_variables` include them), and the earlier stage
    reduces and applies their summed gradient.
    """

    index: int
    device: str
    model: keras.Model
    input_keys: list[int]
    output_keys: list[int]
    layer_names: list[str]
    reads: list = dataclasses.field(default_factory=list)

    @property
    def owned_variables(self) -> list:
        """The trainable weights this stage holds (those of its layers that
        no earlier stage uses)."""
        read = {id(v) for v in self.reads}
        return [v for v in self.model.trainable_variables if id(v) not in read]


@dataclasses.dataclass(frozen=True, eq=False)
class Use:
    """One call of a layer or op in a model's graph (a Keras node), with
    the symbolic tensors that call reads and makes, and its arguments as
    recorded (`call.fill_in(values)` gives them with other tensors)."""

    op: object
    inputs: list
    outputs: list
    call: object

    @property
    def name(self) -> str:
        return self.op.name


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


def uses(model: keras.Model) -> list[Use]:
    """The model's calls of layers and ops in topological order, inputs
    left out; a layer called twice (shared) is there twice.

    The order follows each chain of layers to its end before starting
    another (`partition.chain_order`), so parallel branches such as an
    encoder and a decoder stay contiguous and a split can separate them.
    Besides layers, a functional graph holds plain ops: those Keras adds
    itself (an Embedding's `mask_zero` mask is a `NotEqual`) and
    `keras.ops` calls on symbolic tensors.
    """
    view = functional_view(model)
    calls = {}
    for node in internals.graph_nodes(view):
        calls.setdefault(id(node.operation), []).append(node)
    # Keras' order of operations, each one's calls in the order they run.
    found = [Use(op, _flat(node.input_tensors), _flat(node.outputs), node.arguments)
             for op in view.operations if not isinstance(op, keras.layers.InputLayer)
             for node in calls.get(id(op), [])]
    producer = {id(t): index for index, use in enumerate(found) for t in use.outputs}
    inputs_of = [
        sorted({producer[id(t)] for t in use.inputs if id(t) in producer}) for use in found
    ]
    return [found[index] for index in partition_lib.chain_order(inputs_of)]


def operations(model: keras.Model) -> list:
    """The layer or op of each of the model's `uses`, in their order."""
    return [use.op for use in uses(model)]


def layers(model: keras.Model) -> list:
    """The layers that stages are balanced over, in `uses` order (a
    shared layer once per use).

    Plain ops (no weights) are not counted: `balance` lists and
    `describe_placement` speak of layers only, and each op runs in the stage
    of the first layer that reads its result (`op_stages`).
    """
    return [use.op for use in uses(model) if isinstance(use.op, keras.layers.Layer)]


def op_stages(calls: Sequence[Use], sizes: Sequence[int]) -> list[int]:
    """The stage of each use in `calls` (`uses` order) under `sizes`
    layers per stage: a layer's by the count, a plain op's the earliest
    stage that reads its result (the last layer's before it if none does)."""
    layer_stage = iter(_stage_index(sizes))
    stages = [next(layer_stage) if _is_layer(use) else None for use in calls]
    preceding, last = [], 0
    for stage in stages:
        last = last if stage is None else stage
        preceding.append(last)
    consumers = {}
    for index, use in enumerate(calls):
        for tensor in use.inputs:
            consumers.setdefault(id(tensor), []).append(index)
    for index in reversed(range(len(calls))):  # consumers come later in the order
        if stages[index] is None:
            readers = [stages[j] for t in calls[index].outputs for j in consumers.get(id(t), [])]
            stages[index] = min(readers) if readers else preceding[index]
    return stages


def owner_stages(calls: Sequence[Use], stages: Sequence[int]) -> dict:
    """id of each layer (nested models' layers too) -> the stage of its
    first use, which holds its weights: uses come in topological order, so
    the earliest stage among a layer's uses is where it is first needed."""
    owner = {}
    for use, stage in zip(calls, stages):
        for layer in _with_sublayers(use.op):
            owner[id(layer)] = min(owner.get(id(layer), stage), stage)
    return owner


def shared_weights(model: keras.Model, sizes: Sequence[int]) -> list[tuple]:
    """(weight path, owner stage, stages using it) of each weight that
    more than one stage uses under `sizes`, found from which uses each
    stage runs."""
    calls = uses(model)
    users, found = {}, {}
    for use, stage in zip(calls, op_stages(calls, sizes)):
        for weight in _weights_of(use.op):
            users.setdefault(id(weight), set()).add(stage)
            found[id(weight)] = weight
    return [(found[key].path, min(stages), sorted(stages))
            for key, stages in users.items() if len(stages) > 1]


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
        list of layer counts per stage (a shared layer counts once per use).
    """
    calls = [use for use in uses(model) if _is_layer(use)]
    if not isinstance(balance, str):
        return partition_lib.check_sizes(balance, len(calls), num_stages)
    if balance == "params":
        # A shared layer's weights cost memory once, where they live: in
        # the stage of its first use.
        costs = _params_at_first_use(calls)
    elif balance == "flops":
        costs = [float(costs_lib.flops(use.op, use.outputs)) for use in calls]
    else:
        costs = costs_lib.layer_costs([use.op for use in calls], balance)
    return partition_lib.partition(costs, num_stages, device_speeds=device_speeds)


def _params_at_first_use(calls: Sequence[Use]) -> list[float]:
    seen, costs = set(), []
    for use in calls:
        fresh = [w for w in _weights_of(use.op) if id(w) not in seen]
        seen.update(id(w) for w in fresh)
        costs.append(float(sum(costs_lib.size(w) for w in fresh)))
    return costs


def device_function(model: keras.Model, devices: Sequence[str], sizes: Sequence[int],
                    own: in_place.OwnLayers | None = None):
    """A `clone_function` that builds each layer on its stage's device (a
    shared layer on its first use's), and each layer once: a layer used
    both inside a nested model and outside it (a causal LM's token
    embedding, in its backbone and as the output projection) gets one
    twin, as Keras gives a layer used twice in one graph.

    A layer (or nested model) whose config does not round-trip is, with
    `own`, trained itself: `own` moves its variables to the stage's device.
    Without `own` (a pipeline replica past the first, which needs copies),
    it is refused with the layer and the cause."""
    calls = uses(model)
    owner = owner_stages(calls, op_stages(calls, sizes))
    twins = {}

    def taken(layer):
        # The layer itself, and each layer inside it: a later use of one of
        # them (a tied embedding) must find the same object.
        for inner in internals.sublayers(layer):
            twins[id(inner)] = inner
        return own.take(layer)

    def twin_of(layer, make):
        try:
            twin = make()
        except Exception as error:  # Keras raises many types for a bad config.
            cause = error
        else:
            if not _weights_differ(layer, twin):
                return twin
            cause = "its twin rebuilt from get_config() holds other weights"
        if own is None:
            raise _not_copied(layer, cause)
        return taken(layer)

    def placed(layer, default: str):
        if id(layer) not in twins:
            with tf.device(devices[owner[id(layer)]] if id(layer) in owner else default):
                twins[id(layer)] = twin_of(layer, lambda: replica.clone_layer(layer))
        return twins[id(layer)]

    def clone(layer):
        if id(layer) in twins:
            return twins[id(layer)]
        device = devices[owner.get(id(layer), 0)]
        with tf.device(device):
            if isinstance(layer, keras.Model):
                twin = twin_of(layer, lambda: keras.models.clone_model(
                    layer, clone_function=lambda inner: placed(inner, device), recursive=True))
                twins[id(layer)] = twin
                return twin
            twin = placed(layer, device)
            if twin is not layer and isinstance(model, keras.Sequential) and _built_lazily(twin, layer):
                # A layer that makes its sublayers in __init__ and has no
                # build() gets their variables on its first call; a
                # Sequential calls it outside this scope, so call it here.
                twin.compute_output_spec(layer.input)
            return twin

    return clone


def _weights_differ(layer, twin) -> bool:
    """A twin built like the layer whose weights have other shapes (a config
    that builds another layer); a twin that builds on its first call is
    checked when the whole model's weights are copied."""
    if not isinstance(layer, keras.layers.Layer):  # a plain op (NotEqual, GetItem): no weights
        return False
    if not (layer.built and twin.built) or len(twin.weights) != len(layer.weights):
        return False
    return [tuple(w.shape) for w in twin.weights] != [tuple(w.shape) for w in layer.weights]


def _not_copied(layer, cause) -> replica.RecreateError:
    if not isinstance(cause, str):
        cause = f"{type(cause).__name__}: {' '.join(str(cause).split())[:1500]}"
    cause = cause if cause.endswith((".", ")")) else cause + "."
    return replica.RecreateError(
        f"A pipeline trained data parallel needs a copy of layer {layer.name!r} (class "
        f"{type(layer).__name__}) per replica, and it cannot be rebuilt from its config. {cause} "
        "Alternatively, train one pipeline replica (data_parallel=1), which trains the caller's "
        "layer itself, or train data parallel (DataParallel, MultiWorker).")


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
    """Layer or op name -> its stage's device (a shared layer's first use's:
    its variables are made there, on its first call)."""
    calls = uses(model)
    device_of = {}
    for use, stage in zip(calls, op_stages(calls, sizes)):
        device_of.setdefault(use.name, devices[stage])
    return device_of


def _built_lazily(twin, layer) -> bool:
    return layer.built and len(twin.weights) < len(layer.weights)


def check_devices(graph: "Graph") -> None:
    """Raises unless every variable of each stage lives on its device (a
    shared layer's, on the device of the first stage that uses it).

    Raises:
      ValueError: variables placed elsewhere (named, with their devices).
    """
    held = set()
    misplaced = []
    for stage in graph.stages:
        for variable in stage.model.variables:
            if id(variable) in held:
                continue  # an earlier stage's, read here
            held.add(id(variable))
            if not _is_on(variable.value.device, stage.device):
                misplaced.append(
                    f"{variable.path} on {variable.value.device} (stage {stage.index}: {stage.device})")
    if misplaced:
        raise ValueError(
            "Each layer's variables must live on its stage's device. Received "
            f"variables placed elsewhere: {misplaced[:5]}{' ...' if len(misplaced) > 5 else ''}. "
            "A layer that creates variables outside build() or its first call "
            "cannot be placed; give it a build() method that builds its sublayers."
        )


def build_stages(model: keras.Model, devices: Sequence[str], sizes: Sequence[int]) -> Graph:
    """Cuts a (placed) model into one sub-model per stage; a shared layer's
    uses each go to the stage where the graph needs them, and each stage
    after the first that uses it `reads` its weights."""
    view = functional_view(model)
    calls = uses(view)
    stage_of_op = op_stages(calls, sizes)
    produced = {}  # tensor key -> stage that makes it (-1: a model input)
    for tensor in view.inputs:
        produced[id(tensor)] = -1
    for use, stage in zip(calls, stage_of_op):
        for tensor in use.outputs:
            produced[id(tensor)] = stage
    output_keys = [id(t) for t in view.outputs]
    needed_after = {}  # tensor key -> last stage that consumes it
    for use, stage in zip(calls, stage_of_op):
        for tensor in use.inputs:
            needed_after[id(tensor)] = max(needed_after.get(id(tensor), -1), stage)
    tensors = {id(t): t for use in calls for t in use.inputs + use.outputs}
    tensors.update({id(t): t for t in view.inputs})
    makers = {id(t): id(use.op) for use in calls for t in use.outputs}
    stages, held = [], set()
    for index, device in enumerate(devices):
        members = [use for use, s in zip(calls, stage_of_op) if s == index]
        inputs = _unique(
            id(t) for use in members for t in use.inputs if produced[id(t)] != index
        )
        outputs = [
            key for key, s in produced.items()
            if s == index and (needed_after.get(key, -1) > index or key in output_keys)
        ]
        sub_model = _sub_model(members, [tensors[k] for k in inputs],
                               [tensors[k] for k in outputs], f"{view.name}_stage_{index}", makers)
        reads = [v for v in sub_model.trainable_variables if id(v) in held]
        held.update(id(v) for v in sub_model.variables)
        stages.append(Stage(index, device, sub_model, inputs, outputs,
                            _unique(use.name for use in members if _is_layer(use)), reads))
    struct = internals.output_structure(view)
    return Graph(stages, [id(t) for t in view.inputs], output_keys, struct, view)


@dataclasses.dataclass
class Placement:
    """Which layers run where: returned and printed by `describe_placement`.

    A stage's params are the weights it holds; `shared` lists the weights
    that several stages use (shared layers) as (weight path, the stage
    holding it, the stages using it), in every replica alike.
    """

    rows: list[tuple]  # ([replica,] stage, device, first..last layer, layers, params, flops)
    replicas: bool = False  # rows start with the replica (pipelines trained data parallel)
    shared: list[tuple] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        header = ("stage", "device", "layers", "count", "params", "est. FLOPs/sample")
        table = format_table(self.rows, ("replica",) * self.replicas + header, align="left")
        if not self.shared:
            return table
        lines = [f"  {path}: held by stage {owner}, used by stages {', '.join(map(str, users))}"
                 for path, owner, users in self.shared]
        return "\n".join([table, "Shared weights (held where first used; later stages read them):"]
                         + lines)


def placement_table(model: keras.Model, groups: Sequence[Sequence[str]],
                    sizes: Sequence[int], replicas: Sequence[int] | None = None) -> Placement:
    """The placement of `model` with `sizes` layers per stage on each group
    of devices (one group per pipeline replica): a replica x stage grid.
    `replicas` numbers the groups (default 0, 1, ...; a worker's own
    replica across workers); the replica column shows when there are
    several replicas or they are numbered."""
    calls = [use for use in uses(model) if _is_layer(use)]
    held = _params_at_first_use(calls)  # a weight counts where it is held
    rows = []
    shown = replicas is not None or len(groups) > 1
    for replica, devices in zip(replicas if replicas is not None else range(len(groups)), groups):
        start = 0
        for index, (device, size) in enumerate(zip(devices, sizes)):
            members = calls[start : start + size]
            span = members[0].name if size == 1 else f"{members[0].name} .. {members[-1].name}"
            rows.append((replica,) * shown + (
                index, device, span, size,
                f"{int(sum(held[start : start + size])):,}",
                f"{sum(costs_lib.flops(use.op, use.outputs) for use in members):,}",
            ))
            start += size
    return Placement(rows, replicas=shown, shared=shared_weights(model, sizes))


def _is_on(actual: str, wanted: str) -> bool:
    """Whether a full device name (job, task, type, index) is the device a
    stage asked for; the parts the stage leaves out match anything."""
    have, want = tf.DeviceSpec.from_string(actual), tf.DeviceSpec.from_string(wanted)
    return ((have.device_type or "").upper() == (want.device_type or "CPU").upper()
            and (have.device_index or 0) == (want.device_index or 0)
            and want.job in (None, have.job) and want.task in (None, have.task))


def _stage_index(sizes: Sequence[int]) -> list[int]:
    return [stage for stage, size in enumerate(sizes) for _ in range(size)]


def _sub_model(members: list[Use], inputs: list, outputs: list, name: str,
               makers: dict) -> keras.Model:
    """The stage's uses as a model from `inputs` to `outputs` (`makers`:
    tensor id -> id of the layer or op whose call made it).

    Keras cuts a model out of a graph at intermediate tensors by mapping the
    layer that made each input to a new Input, which also replaces that
    layer's other calls: a shared layer whose earlier call feeds the stage
    and whose later call is in it would vanish from the stage (Keras 3.15,
    `functional.clone_graph_nodes`). Such a stage is rebuilt by calling its
    layers again on fresh inputs, each call as recorded: the same layer
    objects, hence the same weights.
    """
    ops_here = {id(use.op) for use in members}
    if not any(makers.get(id(t)) in ops_here for t in inputs):
        return keras.Model(inputs, outputs, name=name)
    fresh = [keras.Input(batch_shape=t.shape, dtype=t.dtype, sparse=t.sparse) for t in inputs]
    values = {id(t): f for t, f in zip(inputs, fresh)}
    for use in members:  # in topological order
        args, kwargs = use.call.fill_in(values)
        values.update(zip([id(t) for t in use.outputs], keras.tree.flatten(use.op(*args, **kwargs))))
    return keras.Model(fresh, [values[id(t)] for t in outputs], name=name)


def _is_layer(use: Use) -> bool:
    return isinstance(use.op, keras.layers.Layer)


def _with_sublayers(op) -> list:
    """`op` and, for a nested Sequential or functional model, every layer in
    it: what cloning the model clones one by one."""
    if isinstance(op, keras.Model) and hasattr(op, "layers"):
        return [op] + [inner for layer in op.layers for inner in _with_sublayers(layer)]
    return [op]


def _weights_of(op) -> list:
    return list(getattr(op, "weights", []))


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
