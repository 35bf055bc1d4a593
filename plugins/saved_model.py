"""saved_model: OUT/saved_model, the SavedModel that TF Serving and Triton mount.

Before anything is written, the converted SavedModel is checked against the
serving contract (tag ``serve``, signature ``serving_default`` keyed by the
ONNX names, ``None`` where the ONNX dimension is symbolic) and scanned, its
function library included, for Python callbacks (PyFunc): they run in the
converting process but fail in every server (DESIGN.md F1, F3). Such a run
fails naming the ONNX nodes behind them, and since the output is staged, no
SavedModel is left behind.
"""

from __future__ import annotations

from pathlib import Path

from surgeon import SurgeonError, Writer, hookimpl
from surgeon.output import link_tree

# onnx-tf's pooling types (the pooling_type argument of its py_pool) -> ONNX op
POOLING_TYPES = {"AVG": "AveragePool", "MAX": "MaxPool", "MAX_WITH_ARGMAX": "MaxPool", "LP": "LpPool"}


def write(ctx, options, out_dir: Path) -> None:
    converted = ctx.saved_model()
    check_servable(converted, ctx.model, ctx.config.plugins)
    target = out_dir / "saved_model"
    link_tree(converted, target)
    ctx.served_models["saved_model"] = target


def check_servable(path: Path, model, plugins: list[str]) -> None:
    """Raise ``SurgeonError`` unless the SavedModel at ``path`` keeps the serving contract for ``model``.

    ``plugins``: the rewrite plugins that ran, for the hint.
    """
    from surgeon.saved_model_info import pyfunc_calls, read_meta_graph

    meta_graph = read_meta_graph(path)
    check_signature(meta_graph, model)
    calls = pyfunc_calls(meta_graph)
    if not calls:
        return
    nodes = onnx_nodes_behind(calls, model)
    if nodes:
        where = "for ONNX node(s) " + ", ".join(map(describe_node, nodes))
    else:
        where = "for ONNX nodes that could not be identified"
    raise SurgeonError(
        f"the converted SavedModel calls back into Python (PyFunc) {where}: TF Serving, Triton and every "
        "fresh process fail on it ('Could not find callback'), so no SavedModel was written",
        hint="pool_fix ran but left these nodes: `surgeon inspect MODEL.onnx` says why" if "pool_fix" in plugins
        else "add pool_fix to --plugins: it rewrites pooling that onnx-tf can only run through Python into "
        "pooling it converts natively (`surgeon inspect MODEL.onnx` lists such nodes)",
    )


def check_signature(meta_graph, model) -> None:
    """``serving_default`` has the ONNX inputs and outputs as keys, with the ONNX shapes."""
    from surgeon.saved_model_info import SERVING_SIGNATURE, signatures

    found = signatures(meta_graph)
    if SERVING_SIGNATURE not in found:
        raise SurgeonError(f"the converted SavedModel has no {SERVING_SIGNATURE!r} signature "
                           f"(it has: {', '.join(found) or 'none'})")
    signature = found[SERVING_SIGNATURE]
    initializers = {init.name for init in model.graph.initializer}
    expected = {"inputs": [value for value in model.graph.input if value.name not in initializers],
                "outputs": list(model.graph.output)}
    for kind, values in expected.items():
        keys = {tensor["name"]: tensor for tensor in signature[kind]}
        if set(keys) != {value.name for value in values}:
            raise SurgeonError(f"the {SERVING_SIGNATURE!r} signature's {kind} are {sorted(keys)}, "
                               f"not the ONNX {kind} {sorted(value.name for value in values)}")
    for value in expected["inputs"]:
        shape = [dim.dim_value if dim.HasField("dim_value") else None for dim in value.type.tensor_type.shape.dim]
        got = next(tensor for tensor in signature["inputs"] if tensor["name"] == value.name)["shape"]
        if got != shape:
            raise SurgeonError(f"the {SERVING_SIGNATURE!r} signature gives input {value.name!r} the shape {got}, "
                               f"the ONNX model {shape} (None: any size)")


def onnx_nodes_behind(calls, model) -> list:
    """The ONNX pooling nodes that PyFunc ``calls`` stand for, matched by the settings onnx-tf passes them.

    onnx-tf's pool_mixin.py calls ``py_pool(x, kernel_shape, strides,
    dilations, pads, ceil_mode, pooling_type, ...)`` with constants for all
    but ``x``; nodes with the same settings are all named.
    """
    from onnx import helper

    found = []
    for call in calls:
        if len(call.arguments) < 7:
            continue
        kernel, strides, dilations, pads, ceil_mode, pooling_type = call.arguments[1:7]
        for node in model.graph.node:
            if node.op_type != POOLING_TYPES.get(pooling_type) or node in found:
                continue
            attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
            rank = len(attributes.get("kernel_shape", []))
            settings = (list(attributes.get("kernel_shape", [])), list(attributes.get("strides", [1] * rank)),
                        list(attributes.get("dilations", [1] * rank)), bool(attributes.get("ceil_mode", 0)))
            explicit_pads = list(attributes.get("pads", [0] * 2 * rank))
            if settings == (kernel, strides, dilations, ceil_mode) and (not isinstance(pads, list)
                                                                        or pads == explicit_pads):
                found.append(node)
    return found


def describe_node(node) -> str:
    return f"{node.name!r} ({node.op_type})" if node.name else f"{node.op_type} -> {', '.join(node.output)}"


@hookimpl
def surgeon_writers():
    return [Writer(name="saved_model", doc="OUT/saved_model: SavedModel for TF Serving and Triton, signature "
                   "serving_default keyed by the ONNX names; refuses models that call back into Python.",
                   write=write, needs_saved_model=True)]
