"""One worker of the two-worker conformance job: the catalogue's
`idioms.MULTI_WORKER` under MultiWorker. Started by `python -m tfpar.launch`
(which makes the strategy when tfpar is imported, before any TensorFlow
op); writes each idiom's weights, History and evaluation to the directory
given as argument."""

import json
import os
import sys

import numpy as np

import tfpar  # launched: makes the MultiWorker strategy first
import idioms

rank = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
out = sys.argv[1]
for index, idiom in enumerate(idioms.MULTI_WORKER):
    x, y, extra = idiom.data()
    model = idiom.build()
    history = tfpar.fit_distributed(model, x, y, strategy="multi_worker", **idiom.fit_kwargs(extra))
    evaluated = idioms.evaluate(model, x, y)
    np.savez(os.path.join(out, f"{index}_{rank}.npz"), *model.get_weights())
    result = {"history": history.history, "evaluate": {k: float(v) for k, v in evaluated.items()}}
    if index == 0:  # inference under MultiWorker, against the trained model on one device
        predicted = tfpar.predict_distributed(model, x, strategy="multi_worker", batch_size=24, verbose=0)
        reference = model.evaluate(x, y, batch_size=24, verbose=0, return_dict=True)
        distributed = tfpar.evaluate_distributed(model, x, y, strategy="multi_worker", batch_size=24,
                                                 verbose=0, return_dict=True)
        result["inference"] = {
            "predict": float(np.abs(predicted - model.predict(x, verbose=0)).max()),
            "evaluate": max(abs(float(distributed[k]) - float(v)) for k, v in reference.items())}
    with open(os.path.join(out, f"{index}_{rank}.json"), "w") as f:
        json.dump(result, f)
