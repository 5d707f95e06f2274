"""Model splitting and pipelining, from pure planning to the engine:

1. Planning, pure Python (no TensorFlow): `partition` (cutting a chain of
   layer costs into balanced stages) and `schedule` (the task IR, the
   gpipe and 1f1b orders, their dependency rules and simulated clock).
2. Keras placement: `costs` (what a layer costs) and `placement` (which
   layer runs on which device, and the stage sub-models).
3. The TensorFlow engine (micro-batches come from `tfpar.core.microbatch`):
   `stage_calls` (one stage's call and loss sources), `remat`
   (recomputation), `gradients` (summing and checking), `step` (one
   training step's tasks) and `engine` (`PipelineModel`, the Keras model).
   `replicas` (pipeline replicas trained data parallel: device groups and
   each stage's gradient all-reduce) sits between gradients and engine;
   `worker_shards` gives each worker of a multi-worker pipeline its rows.
4. Observing: `timeline` (the stamps the engine records for each task;
   bubble, trace, picture).

The strategies `ModelSplit` and `GPipe` (`tfpar.strategies`) build on it.
"""
