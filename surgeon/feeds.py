"""Seeded inputs shaped and typed from a model: what verification runs, and what TF Serving's warm-up requests
and the example requests carry, so that a served model is warmed and shown with the inputs it was checked on."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from surgeon.errors import SurgeonError
from surgeon.onnx_io import real_inputs

SEED = 0
SYMBOLIC_DIM_SIZE = 4  # the size given to a symbolic dimension other than the batch

Feed = list[np.ndarray]  # one array per model input, in the model's input order


def batch_sizes(model: onnx.ModelProto, requested: Sequence[int] | None) -> list[int]:
    """The requested sizes; by default 1 and 3 when the batch is dynamic, else the fixed batch."""
    fixed = static_batch(model)
    if requested:
        wrong = [size for size in requested if fixed is not None and size != fixed]
        if wrong:
            raise SurgeonError(f"--batch-sizes {wrong[0]}: the model's batch is fixed at {fixed}",
                               hint="make it dynamic with --plugins dynamic_batch")
        return list(requested)
    return [fixed] if fixed is not None else [1, 3]


def static_batch(model: onnx.ModelProto) -> int | None:
    """The fixed leading dimension of the first input, or None when it is symbolic."""
    inputs = real_inputs(model)
    if not inputs:
        return None
    dims = inputs[0].type.tensor_type.shape.dim
    if not dims or not dims[0].HasField("dim_value"):
        return None
    return dims[0].dim_value


def random_feed(model: onnx.ModelProto, size: int) -> Feed:
    """Seeded random inputs for ``model`` with batch ``size`` (the same at every call)."""
    rng = np.random.default_rng(SEED)
    feed = []
    for value in real_inputs(model):
        tensor_type = value.type.tensor_type
        shape = [dim.dim_value if dim.HasField("dim_value") else SYMBOLIC_DIM_SIZE for dim in tensor_type.shape.dim]
        if shape:
            shape[0] = size
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            array = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            array = rng.integers(0, 2, shape).astype(dtype)
        elif dtype == np.uint8:  # images: the whole range
            array = rng.integers(0, 256, shape).astype(dtype)
        else:
            array = rng.integers(0, 4, shape).astype(dtype)
        feed.append(array)
    return feed
