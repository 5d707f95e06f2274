"""The public surface is small and pinned; public names are documented."""

import inspect

import tfpar


def test_top_level_api_is_pinned():
    assert sorted(tfpar.__all__) == [
        "Plan", "configure_devices", "datasets", "describe_placement", "evaluate_distributed",
        "fit_distributed", "models", "plan", "predict_distributed", "strategies", "timeline",
    ]
    assert sorted(tfpar.strategies.__all__) == ["DataParallel", "GPipe", "ModelSplit", "MultiWorker",
                                                   "PipelineStrategy", "PowerSGD"]
    assert sorted(tfpar.models.__all__) == ["encoder_decoder_balance", "mlp", "residual_cnn", "transformer"]


def test_the_command_modules_run_the_cluster_entry_points():
    # `python -m tfpar.launch` and `python -m tfpar.server` are thin mains.
    from tfpar import launch, server

    assert launch.launch is tfpar.cluster.launch.launch and server.serve is tfpar.cluster.server.serve
    assert tfpar.timeline.PipelineTimeline is tfpar.pipeline.timeline.PipelineTimeline


def test_public_callables_have_docstrings_with_an_example():
    public = [tfpar.configure_devices, tfpar.fit_distributed, tfpar.strategies.DataParallel,
              tfpar.strategies.ModelSplit, tfpar.strategies.GPipe, tfpar.strategies.MultiWorker,
              tfpar.describe_placement,
              tfpar.models.mlp, tfpar.models.residual_cnn, tfpar.models.transformer,
              tfpar.models.encoder_decoder_balance, tfpar.datasets.digits, tfpar.datasets.reversal,
              tfpar.datasets.npz, tfpar.datasets.tfrecord, tfpar.datasets.image_folder,
              tfpar.datasets.load, tfpar.timeline.intervals, tfpar.timeline.chrome_trace,
              tfpar.timeline.measured_bubble, tfpar.timeline.ready_idle,
              tfpar.timeline.PipelineTimeline, tfpar.predict_distributed, tfpar.evaluate_distributed]
    for item in public:
        doc = inspect.getdoc(item) or ""
        assert "Example:" in doc and ">>>" in doc, item.__qualname__


def test_predict_and_evaluate_distributed_have_keras_signatures_plus_strategy():
    import keras

    for ours, theirs in ((tfpar.predict_distributed, keras.Model.predict),
                         (tfpar.evaluate_distributed, keras.Model.evaluate)):
        parameters = inspect.signature(ours).parameters
        assert "strategy" in parameters and inspect.signature(theirs).parameters["x"]
        assert list(parameters)[:2] == ["model", "x"]


def test_fit_distributed_has_fits_signature_plus_strategy():
    parameters = inspect.signature(tfpar.fit_distributed).parameters
    assert list(parameters)[:3] == ["model", "x", "y"]
    assert parameters["strategy"].kind is inspect.Parameter.KEYWORD_ONLY
    assert parameters["strategy"].default == "mirrored"
