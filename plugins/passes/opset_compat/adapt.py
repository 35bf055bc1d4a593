"""opset_compat's adapters: each brings a node one version of its operator's schema down.

An adapter looks at a node (a Sketch of it, as the steps before left it) and
returns the Step that brings it from schema version ``newer`` of its
operator to ``older``, None when nothing changes, or raises Unfixable.
Where the schemas differ in attributes or optional slots the node leaves
alone, comparing them is enough (``schemas_step``); ``STEPS`` holds the
adapters of the versions where it is not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from surgeon.graph import INT64_MAX, Builder, Unfixable, constant_value, is_empty, optional_input
from surgeon_plugins.passes.opset_compat.edits import Sketch, Step, base_name, trim_inputs
from surgeon_plugins.passes.opset_compat.schemas import (Schema, is_default, onnx_type, rank_of, schema,
                                                          schema_versions, types_fit)


def slots_fit(tensors: Sequence[gs.Tensor], kind: str, newer: Schema, older: Schema) -> None:
    """The node's used inputs (or outputs) all have a place in ``older``, and those it requires are given."""
    formals = older.inputs if kind == "input" else older.outputs
    newer_formals = newer.inputs if kind == "input" else newer.outputs
    variadic = bool(formals) and formals[-1].variadic
    for index, tensor in enumerate(tensors):
        if index >= len(formals) and not variadic and not is_empty(tensor):
            name = newer_formals[min(index, len(newer_formals) - 1)].name
            raise Unfixable(f"its {kind} {name!r} has no place in {older.name}-{older.since_version}")
    for index, formal in enumerate(formals):
        if formal.required and (index >= len(tensors) or is_empty(tensors[index])):
            raise Unfixable(f"{older.name}-{older.since_version} requires the {kind} {formal.name!r}")


def recorded_types(node: Any, inferred: Mapping[str, int]) -> tuple[list[int | None], list[int | None]]:
    """The element types of the node's inputs and outputs: as the model records them, else as shape inference
    found them (``inferred``: tensor name -> type), else None; a Cast's output from its ``to``."""
    def element(tensor: gs.Tensor) -> int | None:
        return None if is_empty(tensor) else onnx_type(tensor.dtype) or inferred.get(tensor.name)

    inputs = [element(t) for t in node.inputs]
    outputs = [element(t) for t in node.outputs]
    if node.op == "Cast" and outputs:
        outputs[0] = node.attrs.get("to")
    return inputs, outputs


def schemas_step(node: Any, newer: Schema, older: Schema) -> Step | None:
    """The step where the schemas differ at most in attributes and optional slots the node leaves alone."""
    slots_fit(node.inputs, "input", newer, older)
    slots_fit(node.outputs, "output", newer, older)
    dropped, explicit = [], {}
    for name, value in node.attrs.items():
        if name in older.attributes:
            continue
        if name not in newer.attributes or not is_default(newer, name, value):
            raise Unfixable(f"attribute {name}={value!r} has no equivalent in {older.name}-{older.since_version}")
        dropped.append(name)
    for name, (required, older_default) in older.attributes.items():
        if name in node.attrs:
            continue
        if required:
            raise Unfixable(f"{older.name}-{older.since_version} requires attribute {name!r}")
        default = newer.attributes.get(name, (False, None))[1]
        if default is not None and default != older_default:
            explicit[name] = default
    trailing = not older.variadic and len(node.inputs) > len(older.inputs)
    if not dropped and not explicit and not trailing:
        return None

    def edit(node: Any, build: Builder) -> None:
        for name in dropped:
            node.attrs.pop(name)
        node.attrs.update(explicit)
        trim_inputs(node, len(older.inputs) if trailing else len(node.inputs))

    parts = [f"drop {name} (default)" for name in dropped] + [f"{name}={value!r}" for name, value in explicit.items()]
    return Step(", ".join(parts) or None, edit)


def refusing(attribute: str, *values: str) -> StepAdapter:
    """A step that refuses attribute values ``older`` does not know, then compares schemas."""

    def step(node: Any, newer: Schema, older: Schema) -> Step | None:
        value = node.attrs.get(attribute)
        if value in values:
            raise Unfixable(f"{attribute}={value!r} is new in {newer.name}-{newer.since_version}")
        return schemas_step(node, newer, older)

    return step


def axes_to_attribute(node: Any, newer: Schema, older: Schema) -> Step | None:
    """Squeeze/Unsqueeze-13, ReduceSum-13, Reduce*-18 take axes as an input; the versions before, an attribute."""
    axes_input = optional_input(node, 1)
    if axes_input is None and "noop_with_empty_axes" not in node.attrs:
        return None
    axes: list[int] = []
    if axes_input is not None:
        values = constant_value(axes_input)
        if values is None:
            raise Unfixable(f"its axes ({axes_input.name!r}) are computed at run time, and "
                            f"{older.name}-{older.since_version} takes them as an attribute")
        axes = [int(a) for a in values.ravel()]
    identity = bool(node.attrs.get("noop_with_empty_axes", 0)) and not axes

    def edit(node: Any, build: Builder) -> None:
        trim_inputs(node, 1)
        node.attrs.pop("noop_with_empty_axes", None)
        if identity:
            node.op = "Identity"
            node.attrs.clear()
        elif axes:
            node.attrs["axes"] = axes

    return Step("empty axes with noop_with_empty_axes: Identity" if identity else "axes input -> attribute", edit)


def split_to_attribute(node: Any, newer: Schema, older: Schema) -> Step | None:
    """Split-13 takes the sizes as an input, Split-11 as an attribute."""
    split_input = optional_input(node, 1)
    if split_input is None:
        return schemas_step(node, newer, older)
    sizes = constant_value(split_input)
    if sizes is None:
        raise Unfixable(f"its split sizes ({split_input.name!r}) are computed at run time, and "
                        f"{older.name}-{older.since_version} takes them as an attribute")

    def edit(node: Any, build: Builder) -> None:
        trim_inputs(node, 1)
        node.attrs["split"] = [int(size) for size in sizes.ravel()]

    return Step("split input -> attribute", edit)


def split_num_outputs(node: Any, newer: Schema, older: Schema) -> Step | None:
    """Split-18's num_outputs: Split-13 splits evenly into its outputs, or takes the sizes (the last one smaller)."""
    if "num_outputs" not in node.attrs:
        return schemas_step(node, newer, older)
    count, axis, shape = node.attrs["num_outputs"], node.attrs.get("axis", 0), node.inputs[0].shape
    length = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
    if not isinstance(length, int) or length < 0:
        raise Unfixable(f"num_outputs={count} on an axis of unknown length: {older.name}-{older.since_version} "
                        "needs the sizes")
    chunk = -(-length // count)
    sizes = None if length % count == 0 else [chunk] * (count - 1) + [length - chunk * (count - 1)]

    def edit(node: Any, build: Builder) -> None:
        node.attrs.pop("num_outputs")
        if sizes is not None:
            node.inputs.append(build.ints(f"{base_name(node)}/split", sizes))

    return Step(f"num_outputs={count} -> split {sizes}" if sizes else None, edit)


def softmax_axis(node: Any, newer: Schema, older: Schema) -> Step | None:
    """Softmax-13 normalises along one axis (default -1); Softmax-11 over all axes from ``axis`` on (default 1)."""
    axis = node.attrs.get("axis", -1)
    rank = rank_of(node.inputs[0])
    if axis == -1 or (rank is not None and axis == rank - 1):
        if node.attrs.get("axis") == -1:
            return None

        def explicit(node: Any, build: Builder) -> None:
            node.attrs["axis"] = -1

        return Step("axis=-1 made explicit", explicit)
    if rank is None:
        raise Unfixable(f"axis={axis} on an input of unknown rank: {older.name}-{older.since_version} "
                        "normalises over every axis from there on")
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]

    def transposed(node: Any, build: Builder) -> None:
        base = base_name(node)
        node.inputs[0] = build.op("Transpose", [node.inputs[0]], f"{base}/to_last", perm=perm)
        node.attrs["axis"] = -1
        build.insert_after(node, "Transpose", [], f"{base}/back", perm=perm)

    return Step(f"axis={axis} -> the last axis, between Transposes", transposed)


def resize_inputs(node: Any, newer: Schema, older: Schema) -> Step | None:
    """Resize-13 may omit roi and scales; Resize-11 takes them, empty when unused."""
    missing = [index for index in (1, 2) if optional_input(node, index) is None]
    if not missing:
        return None

    def edit(node: Any, build: Builder) -> None:
        while len(node.inputs) < 3:
            node.inputs.append(gs.Variable.empty())
        for index in missing:
            node.inputs[index] = build.const(f"{base_name(node)}/{RESIZE_INPUTS[index]}", np.zeros(0, np.float32))

    return Step("empty " + " and ".join(RESIZE_INPUTS[index] for index in missing), edit)


RESIZE_INPUTS = {1: "roi", 2: "scales"}


def pad_axes(node: Any, newer: Schema, older: Schema) -> Step | None:
    """Pad-18 may pad some axes only; Pad-13 takes pads for every axis."""
    axes_input = optional_input(node, 3)
    if axes_input is None:
        return schemas_step(node, newer, older)
    axes, pads, rank = constant_value(axes_input), constant_value(node.inputs[1]), rank_of(node.inputs[0])
    if axes is None or pads is None or rank is None:
        raise Unfixable("its axes input needs constant axes and pads, and an input of known rank, to become "
                        f"{older.name}-{older.since_version}'s pads for every axis")
    full = np.zeros(2 * rank, np.int64)
    for index, axis in enumerate(int(a) % rank for a in axes.ravel()):
        full[axis], full[rank + axis] = pads[index], pads[len(axes) + index]

    def edit(node: Any, build: Builder) -> None:
        node.inputs[1] = build.const(f"{base_name(node)}/pads", full)
        trim_inputs(node, 3)

    return Step("axes input -> pads for every axis", edit)


def shape_slice(node: Any, newer: Schema, older: Schema) -> Step | None:
    """Shape-15's start and end: Shape-13, then a Slice."""
    if "start" not in node.attrs and "end" not in node.attrs:
        return None
    start, end = node.attrs.get("start", 0), node.attrs.get("end", INT64_MAX)

    def edit(node: Any, build: Builder) -> None:
        base = base_name(node)
        node.attrs.pop("start", None)
        node.attrs.pop("end", None)
        build.insert_after(node, "Slice", [build.ints(f"{base}/start", [start]), build.ints(f"{base}/end", [end])],
                           f"{base}/slice")

    return Step("start/end -> Slice", edit)


def roi_align_mode(node: Any, newer: Schema, older: Schema) -> Step | None:
    """RoiAlign-16 defaults to half_pixel; RoiAlign-10 works as output_half_pixel."""
    mode = node.attrs.get("coordinate_transformation_mode", "half_pixel")
    if mode != "output_half_pixel":
        raise Unfixable(f"coordinate_transformation_mode={mode!r}: RoiAlign-10 knows output_half_pixel only")

    def edit(node: Any, build: Builder) -> None:
        node.attrs.pop("coordinate_transformation_mode")

    return Step("drop coordinate_transformation_mode=output_half_pixel", edit)


def pool_ceil_mode(node: Any, newer: Schema, older: Schema) -> Step | None:
    """Pooling-22 in ceil mode drops a last window that starts in the end padding; earlier versions keep it.

    Where every spatial axis drops it, that is floor mode; where none does, nothing changes.
    """
    step = schemas_step(node, newer, older)
    if not node.attrs.get("ceil_mode", 0):
        return step
    kernel, shape = node.attrs["kernel_shape"], node.inputs[0].shape
    spatial = list(shape[-len(kernel):]) if shape is not None and len(shape) >= len(kernel) else []
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or not all(
            isinstance(size, int) for size in spatial) or not spatial:
        raise Unfixable(f"ceil_mode=1 needs explicit pads and known spatial sizes: {newer.name}-"
                        f"{newer.since_version} drops a last window that starts in the padding, earlier "
                        "versions keep it")
    strides = node.attrs.get("strides", [1] * len(kernel))
    dilations = node.attrs.get("dilations", [1] * len(kernel))
    pads = node.attrs.get("pads", [0] * 2 * len(kernel))
    dropped = []
    for axis, size in enumerate(spatial):
        extent = size + pads[axis] + pads[len(kernel) + axis] - (kernel[axis] - 1) * dilations[axis] - 1
        windows = -(-extent // strides[axis]) + 1
        dropped.append((windows - 1) * strides[axis] >= size + pads[axis])
    if not any(dropped):
        return step
    if not all(dropped):
        raise Unfixable(f"ceil_mode=1 drops the last window on some spatial axes only ({newer.name}-"
                        f"{newer.since_version}); earlier versions keep them all")

    def floor_mode(node: Any, build: Builder) -> None:
        node.attrs["ceil_mode"] = 0
        if step is not None:
            step.edit(node, build)

    return Step(", ".join(filter(None, ["ceil_mode=0 (the windows the ceil adds start in the padding)",
                                        step.what if step is not None else None])), floor_mode)


def reshape_allowzero(node: Any, newer: Schema, older: Schema) -> Step | None:
    """Reshape-14's allowzero=1 (a 0 in the shape means 0, as torch's view) is allowzero=0 when no 0 is in it."""
    if not node.attrs.get("allowzero", 0):
        return schemas_step(node, newer, older)
    shape = constant_value(node.inputs[1])
    if shape is None or not shape.all():
        where = "is computed at run time" if shape is None else "holds a 0"
        raise Unfixable(f"allowzero=1 and its shape {where}: {older.name}-{older.since_version} would copy the "
                        "input's size where a 0 means 0")

    def edit(node: Any, build: Builder) -> None:
        node.attrs.pop("allowzero")

    return Step("drop allowzero=1 (the shape holds no 0)", edit)


StepAdapter = Callable[[Any, Schema, Schema], Step | None]
REDUCTIONS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
              "ReduceProd", "ReduceSumSquare")
# (operator, version) -> how to step from that version to the one before, where comparing the schemas is not enough
STEPS: dict[tuple[str, int], StepAdapter] = {
    ("Squeeze", 13): axes_to_attribute,
    ("Unsqueeze", 13): axes_to_attribute,
    ("ReduceSum", 13): axes_to_attribute,
    **{(op, 18): axes_to_attribute for op in REDUCTIONS},
    ("Split", 13): split_to_attribute,
    ("Split", 18): split_num_outputs,
    **{(op, 13): softmax_axis for op in ("Softmax", "LogSoftmax", "Hardmax")},
    ("Resize", 13): resize_inputs,
    ("Resize", 19): refusing("coordinate_transformation_mode", "half_pixel_symmetric"),
    ("Pad", 18): pad_axes,
    ("Pad", 19): refusing("mode", "wrap"),
    ("Shape", 15): shape_slice,
    ("Reshape", 14): reshape_allowzero,
    ("RoiAlign", 16): roi_align_mode,
    **{(op, 22): pool_ceil_mode for op in ("MaxPool", "AveragePool", "LpPool")},
}


def step_down(node: gs.Node, since: int, target: int, inferred: Mapping[str, int]) -> list[Step]:
    """The steps from schema version ``since`` of the node's operator down to ``target``, planned on a sketch."""
    sketch = Sketch.of(node)
    dry = Builder(None, opset=target)
    versions = [v for v in schema_versions(node.op) if target <= v <= since]
    steps = []
    for newer, older in zip(versions[:0:-1], versions[-2::-1]):
        newer_schema, older_schema = schema(node.op, newer), schema(node.op, older)
        step = STEPS.get((node.op, newer), schemas_step)(sketch, newer_schema, older_schema)
        if step is not None:
            step.edit(sketch, dry)
            steps.append(step)
        types_fit(older_schema, *recorded_types(sketch, inferred))
    return steps
