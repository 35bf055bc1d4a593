"""Seeded inputs shaped and typed from a model: what verification runs, and what TF Serving's warm-up requests
and the example requests carry, so that a served model is warmed and shown with the inputs it was checked on."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from surgeon.errors import SurgeonError
from surgeon.onnx_io import real_inputs

SEED = 0
SYMBOLIC_DIM_SIZE = 4  # the size given to a symbolic dimension other than the batch, unless asked otherwise

Feed = list[np.ndarray]  # one array per model input, in the model's input order


@dataclass(frozen=True)
class Case:
    """What one verification feed is made of: a batch size, and the size of each named dimension of the inputs
    that was asked for (``--axis-sizes seq=8,16``) or that the source model fixes (:func:`cases`); other symbolic
    dimensions get ``SYMBOLIC_DIM_SIZE``."""

    batch: int
    sizes: tuple[tuple[str, int], ...] = ()

    def __str__(self) -> str:
        return " ".join([str(self.batch), *(f"{name}={size}" for name, size in self.sizes)])

    def describe(self) -> str:
        """The case in words: ``batch size 3``, ``batch size 3 with seq 16``."""
        named = ", ".join(f"{name} {size}" for name, size in self.sizes)
        return f"batch size {self.batch}" + (f" with {named}" if named else "")


def cases(model: onnx.ModelProto, requested: Sequence[int] | None,
          axis_sizes: Mapping[str, Sequence[int]] | None = None, fixed: Mapping[str, int] | None = None) -> list[Case]:
    """Every combination of the batch sizes (``batch_sizes``) and the sizes of each named dimension: those asked
    for, and for a dimension the source model fixes (``fixed``: its size there, from :func:`fixed_sizes`) that
    none were asked for, 2, half that size and that size, so that the export's length and shorter ones are all
    checked."""
    axis_sizes = axis_sizes or {}
    named = named_dims(model)
    for name in axis_sizes:
        if name not in named:
            listed = ", ".join(sorted(named)) or "none"
            raise SurgeonError(
                f"--axis-sizes {name}: no input has a dynamic dimension named {name!r} (named dimensions: {listed})",
                hint=f"make a fixed axis dynamic with --plugins dynamic_axes --set dynamic_axes.axes=INPUT:AXIS:{name} "
                     f"(or, from PyTorch, export it dynamic with --set torch.dynamic_axes=INPUT:AXIS:{name})")
        if 0 in named[name]:  # the feeds give axis 0 the batch size
            raise SurgeonError(f"--axis-sizes {name}: {name!r} is on axis 0 of an input, where the batch is",
                               hint="--batch-sizes sets the batch sizes to verify at")
    defaults = {name: sizes_checked_by_default(size) for name, size in (fixed or {}).items() if name not in axis_sizes}
    sizes = [[(name, size) for size in values] for name, values in {**axis_sizes, **defaults}.items()]
    return [Case(batch, tuple(combination))
            for batch in batch_sizes(model, requested) for combination in itertools.product(*sizes)]


def sizes_checked_by_default(fixed: int) -> list[int]:
    """The sizes a named dimension that the source model fixes at ``fixed`` is checked at: 2 (a short one, where a
    size baked in shows most), half, and all of it."""
    return sorted({min(2, fixed), max(fixed // 2, 1), fixed})


@dataclass(frozen=True)
class FixedAxis:
    """An axis after the batch that the source model fixes at ``size`` and the rewritten model names ``name``:
    axis ``axis`` of real input ``input`` (an index into the inputs, in the same order in both models)."""

    input: int
    axis: int
    name: str
    size: int


def fixed_axes(source: onnx.ModelProto, rewritten: onnx.ModelProto) -> list[FixedAxis]:
    """The axes a rewrite made dynamic under a name (``seq``) where the ``source`` model fixes a size; the batch
    (axis 0) is not one of them."""
    found = []
    for index, (before, after) in enumerate(zip(real_inputs(source), real_inputs(rewritten))):
        dims = zip(before.type.tensor_type.shape.dim, after.type.tensor_type.shape.dim)
        for axis, (fixed, named) in enumerate(dims):
            if axis > 0 and fixed.HasField("dim_value") and named.HasField("dim_param") and named.dim_param:
                found.append(FixedAxis(index, axis, named.dim_param, fixed.dim_value))
    return found


def fixed_sizes(source: onnx.ModelProto, rewritten: onnx.ModelProto) -> dict[str, int]:
    """The name of each of the :func:`fixed_axes`, with the size the source model fixes it at."""
    sizes: dict[str, int] = {}
    for axis in fixed_axes(source, rewritten):
        if sizes.setdefault(axis.name, axis.size) != axis.size:
            raise SurgeonError(f"the rewritten model names axes of its inputs {axis.name!r} that the source model "
                               f"fixes at {sizes[axis.name]} and at {axis.size}: one name, one length",
                               hint="give axes of different lengths different names")
    return sizes


def named_dims(model: onnx.ModelProto) -> dict[str, set[int]]:
    """The symbolic dimensions of the model's inputs that have a name, each with the axes it is on."""
    named: dict[str, set[int]] = {}
    for value in real_inputs(model):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_param") and dim.dim_param:
                named.setdefault(dim.dim_param, set()).add(axis)
    return named


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


def case_feed(model: onnx.ModelProto, case: Case) -> Feed:
    """Seeded random inputs for ``model`` shaped as ``case`` says."""
    return random_feed(model, case.batch, dict(case.sizes))


def random_feed(model: onnx.ModelProto, size: int, sizes: Mapping[str, int] | None = None) -> Feed:
    """Seeded random inputs for ``model`` with batch ``size`` (the same at every call); ``sizes``: the size of
    named symbolic dimensions (others get ``SYMBOLIC_DIM_SIZE``). Floats are standard normal, uint8 spans its range,
    booleans 0 or 1, inputs named like a mask (``attention_mask``) as :func:`attention_mask` says, other integers 0
    to 3."""
    sizes = sizes or {}
    rng = np.random.default_rng(SEED)
    feed = []
    for value in real_inputs(model):
        tensor_type = value.type.tensor_type
        shape = [dim.dim_value if dim.HasField("dim_value") else sizes.get(dim.dim_param, SYMBOLIC_DIM_SIZE)
                 for dim in tensor_type.shape.dim]
        if shape:
            shape[0] = size
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            array = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            array = rng.integers(0, 2, shape).astype(dtype)
        elif "mask" in value.name.lower():
            array = attention_mask(rng, shape).astype(dtype)
        elif dtype == np.uint8:  # images: the whole range
            array = rng.integers(0, 256, shape).astype(dtype)
        else:
            array = rng.integers(0, 4, shape).astype(dtype)
        feed.append(array)
    return feed


def attention_mask(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """Random 0s and 1s with the first position after the batch 1: what a mask holds. A mask of 2s and 3s would
    count positions past the length (``cumsum(mask)`` positions), and a sample masked whole, or a first token
    masked under a causal mask, leaves a row of attention with nothing to attend to, whose result no stage need
    agree on."""
    array = rng.integers(0, 2, shape)
    if array.ndim >= 2:
        array[:, 0] = 1
    return array
