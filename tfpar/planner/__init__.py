"""The planner: which layout to train a model with, and why.

`tfpar.plan(model, batch_size)` measures the model's layers and this
machine's links, predicts the step time and peak memory per device of every
layout (one device, DataParallel, ModelSplit, GPipe over every stage count,
micro-batch count and schedule, R x K hybrids) and chooses the fastest that
fits; `fit_distributed(..., strategy="auto")` trains with that choice.

Modules, from the measurements to the choice: `profile` (each layer's
measured cost), `links` (all-reduce and copy costs, cached per machine),
`cost_model` (predictions, pure Python), `search` (candidates and the
choice, pure Python), `plans` (`plan` and `Plan`).
"""

from tfpar.planner.plans import Plan, plan

__all__ = ["Plan", "plan"]
