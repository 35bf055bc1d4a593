"""Sources: what turns the SOURCE of `surgeon run` into an ONNX model."""
