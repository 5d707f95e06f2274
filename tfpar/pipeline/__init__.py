"""Model splitting and pipelining, in four layers, each importing only those above:

1. Planning, pure Python (no TensorFlow): `partition` (cutting a chain of
   layer costs into balanced stages) and `schedule` (the task IR, the
   gpipe and 1f1b orders, their dependency rules and simulated clock).
2. Keras placement: `costs` (what a layer costs) and `placement` (which
   layer runs on which device, and the stage sub-models).
3. The TensorFlow engine: `microbatch` (split and merge a batch),
   `stage_calls` (one stage's call and loss sources), `remat`
   (recomputation), `gradients` (summing and checking), `step` (one
   training step's tasks) and `engine` (`PipelineModel`, the Keras model).
4. Observing: `timeline` (stamps of each task, bubble, trace, picture).

The strategies `ModelSplit` and `GPipe` (`tfpar.strategies`) build on it.
"""
