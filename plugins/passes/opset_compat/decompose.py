"""opset_compat's decompositions: operators onnx-tf lacks, or that do not exist yet at the opset chosen,
written with primitives it converts.

A decomposition plans on the node (raising Unfixable) and returns the edit
that replaces it by primitives, which it emits in their forms at the target
opset.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from surgeon.graph import Builder, Unfixable, optional_input
from surgeon_plugins.converters.onnx_tf.support import since_version
from surgeon_plugins.passes.opset_compat.edits import Edit, base_name, take_outputs, trim_inputs
from surgeon_plugins.passes.opset_compat.schemas import (element_type, float_type, known_type, rank_of, schema,
                                                          types_fit)


def trailing_axes(x: gs.Tensor, axis: int) -> list[int]:
    if axis < 0:
        return list(range(axis, 0))
    rank = rank_of(x)
    if rank is None:
        raise Unfixable(f"axis={axis} on an input of unknown rank")
    return list(range(axis, rank))


def compute_type(dtype: np.dtype, stash_type: int | None) -> np.dtype:
    return onnx.helper.tensor_dtype_to_np_dtype(stash_type) if stash_type else dtype


def normalize(build: Builder, x: gs.Tensor, axes: list[int], epsilon: float, dtype: np.dtype, compute: np.dtype,
              base: str, centre: bool = True) -> tuple[gs.Tensor, gs.Tensor | None, gs.Tensor]:
    """(x - mean) / sqrt(variance + epsilon) over ``axes`` (without centring: x / RMS), computed in the stash type
    ``compute`` and cast back to ``dtype``; also the mean and 1/std (in the stash type)."""
    value = build.cast(x, compute, f"{base}/stash") if compute != dtype else x
    mean = build.reduce_mean(value, axes, f"{base}/mean") if centre else None
    centred = build.op("Sub", [value, mean], f"{base}/centred") if centre else value
    variance = build.reduce_mean(build.op("Mul", [centred, centred], f"{base}/square"), axes, f"{base}/variance")
    std = build.op("Sqrt", [build.op("Add", [variance, build.const(f"{base}/epsilon", epsilon, compute)],
                                     f"{base}/variance_eps")], f"{base}/std")
    inverse = build.op("Reciprocal", [std], f"{base}/inv_std")
    normalized = build.op("Mul", [centred, inverse], f"{base}/normalized")
    if compute != dtype:
        normalized = build.cast(normalized, dtype, f"{base}/unstash")
    return normalized, mean, inverse


def normalization_settings(node: gs.Node) -> tuple[gs.Tensor, list[int], Any, Any, float]:
    """Input, normalized axes, element type, compute type and epsilon of a *Normalization node."""
    x = node.inputs[0]
    dtype = float_type(x)
    return (x, trailing_axes(x, node.attrs.get("axis", -1)), dtype,
            compute_type(dtype, node.attrs.get("stash_type", 1)), node.attrs.get("epsilon", 1e-5))


def layer_normalization(node: gs.Node, since: int | None, opset: int) -> Edit:
    x, axes, dtype, compute, epsilon = normalization_settings(node)
    scale, bias = node.inputs[1], optional_input(node, 2)

    def edit(node: gs.Node, build: Builder) -> None:
        base = base_name(node)
        y, mean_out, inverse_out = (take_outputs(node) + [None, None])[:3]
        normalized, mean, inverse = normalize(build, x, axes, epsilon, dtype, compute, base)
        scaled = build.op("Mul", [normalized, scale], f"{base}/scaled", output=None if bias else y)
        if bias is not None:
            build.op("Add", [scaled, bias], f"{base}/biased", output=y)
        for statistic, wanted in ((mean, mean_out), (inverse, inverse_out)):
            if wanted is not None:
                build.op("Identity", [statistic], f"{base}/{wanted.name}", output=wanted)

    return edit


def rms_normalization(node: gs.Node, since: int | None, opset: int) -> Edit:
    x, axes, dtype, compute, epsilon = normalization_settings(node)
    scale = node.inputs[1]

    def edit(node: gs.Node, build: Builder) -> None:
        base = base_name(node)
        (y,) = take_outputs(node)
        normalized, _, _ = normalize(build, x, axes, epsilon, dtype, compute, base, centre=False)
        build.op("Mul", [normalized, scale], f"{base}/scaled", output=y)

    return edit


def group_normalization(node: gs.Node, since: int | None, opset: int) -> Edit:
    """Normalise the [N, groups, -1] view; GroupNormalization-18 scales per group, -21 per channel."""
    x, scale, bias = node.inputs
    groups = node.attrs["num_groups"]
    per_group = since == 18
    dtype = float_type(x)
    epsilon = node.attrs.get("epsilon", 1e-5)
    compute = compute_type(dtype, None if per_group else node.attrs.get("stash_type", 1))

    def edit(node: gs.Node, build: Builder) -> None:
        base = base_name(node)
        (y,) = take_outputs(node)
        shape = build.op("Shape", [x], f"{base}/shape")
        grouped = build.op("Reshape", [x, build.ints(f"{base}/groups", [0, groups, -1])],
                           f"{base}/grouped")
        normalized, _, _ = normalize(build, grouped, [2], epsilon, dtype, compute, base)
        if not per_group:
            ungrouped = build.op("Reshape", [normalized, shape], f"{base}/ungrouped")
            normalized = build.op("Reshape", [ungrouped, build.ints(f"{base}/channels", [0, 0, -1])],
                                  f"{base}/per_channel")
        column = build.ints(f"{base}/column", [-1, 1])
        scaled = build.op("Mul", [normalized, build.op("Reshape", [scale, column], f"{base}/scale")],
                          f"{base}/scaled")
        biased = build.op("Add", [scaled, build.op("Reshape", [bias, column], f"{base}/bias")], f"{base}/biased")
        build.op("Reshape", [biased, shape], f"{base}/restored", output=y)

    return edit


def gelu(node: gs.Node, since: int | None, opset: int) -> Edit:
    x = node.inputs[0]
    approximate = node.attrs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise Unfixable(f"approximate={approximate!r}")
    dtype = float_type(x)

    def edit(node: gs.Node, build: Builder) -> None:
        base = base_name(node)
        (y,) = take_outputs(node)

        def const(name: str, value: float) -> gs.Constant:
            return build.const(f"{base}/{name}", value, dtype)

        if approximate == "tanh":
            cube = build.op("Mul", [build.op("Mul", [x, x], f"{base}/square"), x], f"{base}/cube")
            inner = build.op("Add", [x, build.op("Mul", [cube, const("coefficient", 0.044715)], f"{base}/cubic")],
                             f"{base}/inner")
            scaled = build.op("Mul", [inner, const("sqrt_2_over_pi", math.sqrt(2 / math.pi))], f"{base}/scaled")
            activation = build.op("Tanh", [scaled], f"{base}/tanh")
        else:
            scaled = build.op("Div", [x, const("sqrt_2", math.sqrt(2))], f"{base}/scaled")
            activation = build.op("Erf", [scaled], f"{base}/erf")
        gate = build.op("Add", [activation, const("one", 1)], f"{base}/gate")
        build.op("Mul", [build.op("Mul", [x, gate], f"{base}/gated"), const("half", 0.5)], f"{base}/half",
                 output=y)

    return edit


Gate = Callable[[Builder, gs.Tensor, str], gs.Tensor]  # (builder, x, base name) -> the gate of x


def self_gated(gate: Gate) -> Callable[[gs.Node, int | None, int], Edit]:
    """The decomposition of an activation ``x * gate(x)``."""
    def plan(node: gs.Node, since: int | None, opset: int) -> Edit:
        def edit(node: gs.Node, build: Builder) -> None:
            base, x = base_name(node), node.inputs[0]
            (y,) = take_outputs(node)
            build.op("Mul", [x, gate(build, x, base)], f"{base}/gated", output=y)

        return edit

    return plan


def mish_gate(build: Builder, x: gs.Tensor, base: str) -> gs.Tensor:
    """Mish is x * tanh(softplus(x))."""
    return build.op("Tanh", [build.op("Softplus", [x], f"{base}/softplus")], f"{base}/tanh")


def hard_swish_gate(build: Builder, x: gs.Tensor, base: str) -> gs.Tensor:
    """HardSwish is x * HardSigmoid(x) with alpha 1/6 and beta 0.5."""
    return build.op("HardSigmoid", [x], f"{base}/gate", alpha=1 / 6, beta=0.5)


def cast_like(node: gs.Node, since: int | None, opset: int) -> Edit:
    target = known_type(node.inputs[1])
    types_fit(schema("Cast", since_version("Cast", opset)), [element_type(node.inputs[0])], [target])

    def edit(node: gs.Node, build: Builder) -> None:
        node.op = "Cast"
        node.attrs.pop("saturate", None)
        node.attrs["to"] = target
        trim_inputs(node, 1)

    return edit


def trilu(node: gs.Node, since: int | None, opset: int) -> Edit:
    """Keep the elements with ``column - row >= k`` (upper) or ``<= k`` (lower), zero the others."""
    elem = known_type(node.inputs[0])
    upper = bool(node.attrs.get("upper", 1))

    def edit(node: gs.Node, build: Builder) -> None:
        base, x, k = base_name(node), node.inputs[0], optional_input(node, 1)
        (y,) = take_outputs(node)
        shape = build.op("Shape", [x], f"{base}/shape")
        zero, one = build.ints(f"{base}/zero", 0), build.ints(f"{base}/one", 1)

        def indices(name: str, axis: int) -> gs.Tensor:
            size = build.op("Gather", [shape, build.ints(f"{base}/{name}_axis", axis)], f"{base}/{name}")
            return build.op("Range", [zero, size, one], f"{base}/{name}_index")

        rows, columns = indices("rows", -2), indices("columns", -1)
        offset = build.op("Sub", [build.unsqueeze(columns, [0], f"{base}/row_of_columns"),
                                  build.unsqueeze(rows, [1], f"{base}/column_of_rows")], f"{base}/offset")
        outside = build.op("Less" if upper else "Greater", [offset, k if k is not None else zero], f"{base}/outside")
        inside = build.op("Not", [outside], f"{base}/inside")
        if elem == onnx.TensorProto.BOOL:  # onnxruntime has no Where-9 for booleans
            build.op("And", [x, inside], f"{base}/kept", output=y)
        else:
            filler = build.const(f"{base}/filler", 0, onnx.helper.tensor_dtype_to_np_dtype(elem))
            build.op("Where", [inside, x, filler], f"{base}/kept", output=y)

    return edit


def upsample(node: gs.Node, since: int | None, opset: int) -> Edit:
    """Upsample-9/10 is Resize with asymmetric coordinates (rounding down for nearest)."""
    mode = node.attrs.get("mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise Unfixable(f"mode={mode!r}")
    old_form = since_version("Resize", opset) == 10

    def edit(node: gs.Node, build: Builder) -> None:
        node.op = "Resize"
        if old_form:
            return
        node.inputs.insert(1, build.const(f"{base_name(node)}/roi", np.zeros(0, np.float32)))
        node.attrs["coordinate_transformation_mode"] = "asymmetric"
        if mode == "nearest":
            node.attrs["nearest_mode"] = "floor"

    return edit


def scatter(node: gs.Node, since: int | None, opset: int) -> Edit:
    def edit(node: gs.Node, build: Builder) -> None:
        node.op = "ScatterElements"

    return edit


@dataclass(frozen=True)
class Decomposition:
    primitives: tuple[str, ...]
    # (node, its version: None where the op is newer than the model's opset, the target opset); raises Unfixable
    plan: Callable[[gs.Node, int | None, int], Edit]


NORMALIZATION = ("ReduceMean", "Sub", "Mul", "Add", "Sqrt", "Reciprocal", "Cast")
DECOMPOSITIONS: dict[str, Decomposition] = {
    "LayerNormalization": Decomposition(NORMALIZATION, layer_normalization),
    "RMSNormalization": Decomposition(NORMALIZATION, rms_normalization),
    "GroupNormalization": Decomposition(("Shape", "Reshape", *NORMALIZATION), group_normalization),
    "Gelu": Decomposition(("Mul", "Div", "Add", "Erf", "Tanh"), gelu),
    "Mish": Decomposition(("Softplus", "Tanh", "Mul"), self_gated(mish_gate)),
    "HardSwish": Decomposition(("HardSigmoid", "Mul"), self_gated(hard_swish_gate)),
    "CastLike": Decomposition(("Cast",), cast_like),
    "Trilu": Decomposition(("Shape", "Gather", "Range", "Unsqueeze", "Sub", "Less", "Greater", "Not", "And",
                            "Where"), trilu),
    "Upsample": Decomposition(("Resize",), upsample),
    "Scatter": Decomposition(("ScatterElements",), scatter),
}
