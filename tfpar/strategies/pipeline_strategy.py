"""A model's layers in stages on devices: what ModelSplit and GPipe share.

`PipelineStrategy` places the caller's model as stage sub-models
(`tfpar.pipeline.placement`), trains them as a `PipelineModel`, in
data-parallel replicas on one host or across workers, and writes the
trained weights back. `ModelSplit` is its one-micro-batch case, `GPipe`
the pipelined one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import keras

from tfpar.core import checks, devices as devices_lib, in_place, internals, microbatch, replica
from tfpar.pipeline import costs, placement, replicas as replicas_lib, schedule as schedule_lib
from tfpar.pipeline import worker_shards
from tfpar.pipeline.engine import PipelineModel
from tfpar.strategies import contract
from tfpar.strategies.multi_worker import MultiWorker


class PipelineStrategy:
    """What `ModelSplit` and `GPipe` share: a model's layers in contiguous
    stages on devices, trained by a pipeline of micro-batches (one, for
    ModelSplit), optionally in data-parallel replicas. Its arguments, and
    their defaults, are GPipe's (see there); ModelSplit fixes one
    micro-batch. `fit_distributed` meets it through the runner contract
    (`tfpar.strategies.contract`).
    """

    # Gradients cross replicas as they are, and every replica holds its
    # stages' whole optimizer state (DataParallel options only).
    compression = None
    shard = None

    def __init__(
        self,
        devices: int | Sequence[str] | None = None,
        *,
        microbatches: int = 4,
        balance: str | Sequence[int] = "flops",
        schedule: str = "gpipe",
        rematerialize: bool = False,
        device_speeds: Sequence[float] | None = None,
        record_timeline: bool = False,
        data_parallel: int | str = 1,
    ):
        checks.whole_number("microbatches", microbatches)
        if schedule not in schedule_lib.SCHEDULES:
            raise ValueError(
                f"schedule must be one of {list(schedule_lib.SCHEDULES)}. Received: schedule={schedule!r}."
            )
        self.microbatches = microbatches
        self.schedule = schedule
        self.rematerialize = checks.boolean("rematerialize", rematerialize)
        self.record_timeline = checks.boolean("record_timeline", record_timeline)
        self.multi_worker = None
        # The caller's layers whose config does not round-trip, which the
        # first pipeline replica trains itself (the others need copies).
        self._own = in_place.OwnLayers()
        if data_parallel == "workers":
            self.multi_worker = _multi_worker_job()
            self.devices = _worker_devices(self.multi_worker, devices)
            self.groups = [self.devices]
        else:
            self.devices = devices_lib.resolve(devices)
            checks.whole_number("data_parallel", data_parallel, meaning=' or "workers"')
            self.groups = replicas_lib.groups(self.devices, data_parallel)
        self.data_parallel = data_parallel
        if isinstance(balance, str) and balance not in costs.KINDS:
            raise ValueError(
                f"balance must be one of {list(costs.KINDS)} or a list of layer "
                f"counts per stage. Received: balance={balance!r}."
            )
        self.balance = balance if isinstance(balance, str) else list(balance)
        self.device_speeds = None if device_speeds is None else list(device_speeds)

    @property
    def num_stages(self) -> int:
        return len(self.groups[0])

    @property
    def replicas(self) -> int:
        """How many pipeline replicas train data parallel (all workers')."""
        return self.multi_worker.config.num_workers if self.multi_worker else self.data_parallel

    @property
    def is_chief(self) -> bool:
        """True on the process that writes checkpoints, logs and models."""
        return self.multi_worker.is_chief if self.multi_worker else True

    def sizes(self, model: keras.Model) -> list[int]:
        """Layers per stage for `model` under this strategy's balance."""
        return placement.stage_sizes(
            model, self.num_stages, self.balance, device_speeds=self.device_speeds
        )

    def describe(self, model: keras.Model) -> placement.Placement:
        # Across workers, this worker's replica: numbered by its task.
        own = [self.multi_worker.config.task_index] if self.multi_worker else None
        return placement.placement_table(model, self.groups, self.sizes(model), own)

    # The fit_distributed contract (strategies/contract.py).

    def check_fit(self, x, fit_kwargs: dict) -> None:
        parts = self.microbatches * self.replicas
        what = "micro-batches" if self.replicas == 1 else "replicas x micro-batches"
        contract.check_divisible(
            x, fit_kwargs, parts, what,
            uneven_note=(
                "It is cut into near-equal micro-batches whose losses are "
                "weighted by size, so training stays exact."
            ),
        )

    def recreate(self, model: keras.Model) -> keras.Model:
        if not isinstance(model, keras.Sequential):
            placement.functional_view(model)  # a subclassed model cannot be split at all
        if not model.built:
            raise ValueError(
                f"Model {model.name!r} must be built before it is split into "
                "stages: give it a keras.Input(...) or call model.build(input_shape)."
            )
        _check_default_steps(model, type(self).__name__)
        _check_no_xla(model, type(self).__name__)
        if self.microbatches > 1:
            _check_mean_losses(model)
        sizes = self.sizes(model)

        def placed(group, own=None):
            return dict(clone_function=placement.device_function(model, group, sizes, own),
                        call_function=placement.call_function(model, group, sizes))

        def stages(twin, group):
            graph = placement.build_stages(twin, group, sizes)
            placement.check_devices(graph)
            return graph

        def pipeline(twin: keras.Model) -> PipelineModel:
            # Replicas past the first: the caller's model again, placed on
            # their own devices, from the same weights.
            others = [replica.clone(model, **placed(group)) for group in self.groups[1:]]
            return PipelineModel(
                twin, stages(twin, self.groups[0]), microbatches=self.microbatches,
                schedule=self.schedule, rematerialize=self.rematerialize,
                record_timeline=self.record_timeline,
                replicas=[(t, stages(t, g)) for t, g in zip(others, self.groups[1:])],
                workers=self.replicas if self.multi_worker else None,
                timeout_seconds=self.multi_worker.timeout_seconds if self.multi_worker else None,
                caller=model)

        try:
            return replica.recreate(model, contextlib.nullcontext(), wrap=pipeline,
                                    **placed(self.groups[0], self._own))
        except Exception:
            self.discard(None, model)
            raise

    def write_back(self, trained: keras.Model, model: keras.Model) -> None:
        self._own.release(model, trained=True)
        replica.write_back(trained, model)

    def discard(self, trained: keras.Model, model: keras.Model) -> None:
        """The pipeline trains a twin; the caller's layers it trains itself
        (configs that do not round-trip) get their values back."""
        self._own.release(model, trained=False)

    def fit(self, model: keras.Model, x, y, fit_kwargs: dict) -> keras.callbacks.History:
        if self.multi_worker:
            x, y, fit_kwargs = worker_shards.shard_fit(x, y, fit_kwargs, self.multi_worker.config)
        return model.fit(x, y, **fit_kwargs)

    def predict(self, model: keras.Model, x, predict_kwargs: dict):
        # Across workers each predicts every sample on its own replica:
        # prediction needs nothing from the others.
        return model.predict(x, **predict_kwargs)

    def evaluate(self, model: keras.Model, x, y, evaluate_kwargs: dict):
        if self.multi_worker:  # each its rows; the test step gathers the batch
            x, y, evaluate_kwargs = worker_shards.shard_fit(
                x, y, evaluate_kwargs, self.multi_worker.config)
        return model.evaluate(x, y, **evaluate_kwargs)

    def _data_parallel_repr(self) -> str:
        return "" if self.data_parallel == 1 else f", data_parallel={self.data_parallel!r}"


def _multi_worker_job():
    """This worker's MultiWorker strategy, which a launched job makes at
    import (TensorFlow configures collectives only at start-up)."""
    strategy = MultiWorker.existing()
    if strategy is None:
        raise ValueError(
            'data_parallel="workers" trains one pipeline replica per worker of a '
            "multi-worker job, and this process is not one (no MultiWorker strategy was "
            "made at start-up). Start the program with `python -m tfpar.launch -n N "
            "--virtual-devices K -- python train.py`, or set TF_CONFIG and create "
            "tfpar.strategies.MultiWorker(virtual_devices=K) first thing. Received: "
            f"TF_CONFIG={'set' if os.environ.get('TF_CONFIG') else 'not set'}."
        )
    return strategy


def _worker_devices(strategy, devices) -> list[str]:
    """This worker's own devices, by their full names in the cluster."""
    # MultiWorker's own replica uses one device per worker; a pipeline
    # replica uses each of the worker's logical devices of that kind.
    first = strategy.extended.worker_devices[0]
    prefix, kind = first.split("/device:")[0], first.split("/device:")[1].split(":")[0]
    own = [d for d in devices_lib.local_devices(kind) if d.startswith(prefix + "/")]
    if devices is None:
        return own
    if isinstance(devices, int) and not isinstance(devices, bool):
        if not 1 <= devices <= len(own):
            raise ValueError(f"devices={devices} asks for {devices} device(s) of this worker, "
                             f"which has {len(own)}: {own}. Start the workers with more "
                             "(--virtual-devices on CPUs).")
        return own[:devices]
    wanted = [devices] if isinstance(devices, str) else list(devices)
    prefix = own[0].split("/device:")[0]
    return [name if name.startswith("/job:") else prefix + devices_lib.resolve(name)[0]
            for name in wanted]


# What a pipeline runs in place of the model's own methods: overriding one
# would be silently ignored, so it is refused.
_PIPELINE_RUNS = ("train_step", "test_step", "predict_step", "compute_loss", "compute_metrics")


def _check_default_steps(model: keras.Model, strategy: str) -> None:
    custom = checks.overridden(model, _PIPELINE_RUNS)
    if custom:
        raise ValueError(
            f"{strategy} runs its own training step, stage by stage, so a model that "
            f"overrides {custom} cannot be split: those overrides would be ignored. "
            f"Received: model {model.name!r} of class {type(model).__name__}. Train it "
            "with a data-parallel strategy (DataParallel, MultiWorker), which runs your "
            "step, or move the logic into layers and compiled losses and metrics."
        )


def _check_no_xla(model: keras.Model, strategy: str) -> None:
    """XLA compiles a step for one device; a pipeline's weights live on
    several (TensorFlow: "Trying to access resource ... located in device
    CPU:1 from device CPU:0")."""
    if internals.compile_config(model).get("jit_compile") is True:
        raise ValueError(
            f"{strategy} places each stage's weights on its own device, and XLA compiles a "
            "step for one device, so it cannot run a model compiled with jit_compile=True. "
            f"Received: model {model.name!r} with jit_compile=True. Compile it with "
            "jit_compile=False (or the default, 'auto')."
        )


def _check_mean_losses(model: keras.Model) -> None:
    """Micro-batch losses are weighted by their share of the batch, which is
    exact for losses averaged over the batch (Keras' default reduction)."""
    for loss in microbatch.unaveraged_losses(model):
        raise ValueError(
            "Pipelining weights each micro-batch's loss by its share of the "
            "batch, which equals one-device training for losses averaged "
            f"over the batch (reduction in {list(microbatch.AVERAGED)}; Keras' "
            f"default is the first). Received: loss {loss.name!r} with reduction={loss.reduction!r}. "
            "Use the default reduction, or microbatches=1."
        )
