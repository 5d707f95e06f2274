"""The public surface is small and pinned; public names are documented."""

import inspect

import tfpar


def test_top_level_api_is_pinned():
    assert sorted(tfpar.__all__) == [
        "configure_devices", "datasets", "describe_placement", "fit_distributed", "models",
        "strategies", "timeline",
    ]
    assert sorted(tfpar.strategies.__all__) == ["DataParallel", "GPipe", "ModelSplit", "MultiWorker"]
    assert sorted(tfpar.models.__all__) == ["encoder_decoder_balance", "mlp", "residual_cnn", "transformer"]


def test_public_callables_have_docstrings_with_an_example():
    public = [tfpar.configure_devices, tfpar.fit_distributed, tfpar.strategies.DataParallel,
              tfpar.strategies.ModelSplit, tfpar.strategies.GPipe, tfpar.strategies.MultiWorker,
              tfpar.describe_placement,
              tfpar.models.mlp, tfpar.models.residual_cnn, tfpar.models.transformer,
              tfpar.models.encoder_decoder_balance, tfpar.datasets.digits, tfpar.datasets.reversal,
              tfpar.datasets.npz, tfpar.datasets.tfrecord, tfpar.datasets.image_folder,
              tfpar.datasets.load, tfpar.timeline.intervals, tfpar.timeline.chrome_trace,
              tfpar.timeline.measured_bubble, tfpar.timeline.PipelineTimeline]
    for item in public:
        doc = inspect.getdoc(item) or ""
        assert "Example:" in doc and ">>>" in doc, item.__qualname__


def test_fit_distributed_has_fits_signature_plus_strategy():
    parameters = inspect.signature(tfpar.fit_distributed).parameters
    assert list(parameters)[:3] == ["model", "x", "y"]
    assert parameters["strategy"].kind is inspect.Parameter.KEYWORD_ONLY
    assert parameters["strategy"].default == "mirrored"
