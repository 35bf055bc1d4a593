"""Converters: the rewritten ONNX model to a TensorFlow SavedModel."""
