"""Rewrite passes: each fixes one hazard of the ONNX graph on its way to a served model."""
