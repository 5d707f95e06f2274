import tfpar


def test_mlp_shapes_and_options():
    model = tfpar.models.mlp(64, 10, hidden=(32, 16), dropout=0.1, batch_norm=True)
    assert model.output_shape == (None, 10)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Dense", "BatchNormalization", "Dropout"] * 2 + ["Dense"]
    assert all(layer.synchronized for layer in model.layers if kinds[model.layers.index(layer)] == "BatchNormalization")
