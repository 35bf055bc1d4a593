"""ONNX shape inference for an onnx-graphsurgeon graph, for passes that need shapes exporters left out.

Exporting a whole graph to run inference copies every weight (seconds for a
large model); this builds a skeleton instead, with weights declared as typed
inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import onnx
import onnx_graphsurgeon as gs

from surgeon.onnx_io import nonpositive_attribute

Types = tuple[int, list[int | None] | None]  # ONNX element type, dims


def topological(graph: gs.Graph) -> list[gs.Node]:
    """The nodes in an order where every producer comes before its consumers (without touching the graph).

    Nodes whose outputs were cleared (removed by an earlier pass) are left out.
    """
    producer = {id(t): node for node in graph.nodes for t in node.outputs}
    order: list[gs.Node] = []
    done: set[int] = set()
    for root in (node for node in graph.nodes if node.outputs):
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if id(node) in done:
                continue
            if expanded:
                done.add(id(node))
                order.append(node)
                continue
            stack.append((node, True))
            for tensor in [*node.inputs, *captured(node)]:
                before = producer.get(id(tensor))
                if before is not None and id(before) not in done:
                    stack.append((before, False))
    return order


def captured(node: gs.Node) -> Iterator[gs.Tensor]:
    """Tensors the subgraphs of ``node`` read (a superset of the outer tensors they capture)."""
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            for inner in value.nodes:
                yield from inner.inputs
                yield from captured(inner)


def opset_imports(graph: gs.Graph) -> list[onnx.OperatorSetIdProto]:
    imports = list(graph.import_domains or [])
    if not any(entry.domain in ("", "ai.onnx") for entry in imports):
        imports.append(onnx.helper.make_opsetid("", graph.opset))
    return imports


def inferred_types(graph: gs.Graph, order: Sequence[gs.Node] | None = None,
                   fixed_dims: Mapping[int, tuple[int, int]] | None = None) -> dict[str, Types]:
    """Element type and dims (None where unknown) of every tensor, from ONNX shape inference.

    Inference runs on a skeleton of the graph: weights are declared as typed
    inputs rather than copied, since only small constants (shapes, axes)
    matter by value. ``order``: the nodes sorted (default: ``topological``);
    ``fixed_dims``: graph input id -> (axis, size) to assume for that dim.
    A graph that onnx's shape inference would crash on gets no shapes.
    """
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    inputs, initializers = [], []
    fixed = fixed_dims or {}
    for tensor in graph.inputs:
        info = OnnxExporter.export_value_info_proto(tensor, do_type_check=False)
        if id(tensor) in fixed:
            axis, size = fixed[id(tensor)]
            info.type.tensor_type.shape.dim[axis].Clear()
            info.type.tensor_type.shape.dim[axis].dim_value = size
        inputs.append(info)
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            if math.prod(tensor.shape) <= 64:
                initializers.append(OnnxExporter.export_tensor_proto(tensor))
            else:
                inputs.append(OnnxExporter.export_value_info_proto(tensor, do_type_check=False))
    outputs = []
    for tensor in graph.outputs:
        info = OnnxExporter.export_value_info_proto(tensor, do_type_check=False)
        info.type.tensor_type.ClearField("shape")
        outputs.append(info)
    nodes = [OnnxExporter.export_node(node) for node in (topological(graph) if order is None else order)]
    model = onnx.helper.make_model(onnx.helper.make_graph(nodes, "dims", inputs, outputs, initializers),
                                   opset_imports=opset_imports(graph))
    if graph.ir_version:
        model.ir_version = graph.ir_version
    try:
        inferred = model if nonpositive_attribute(model.graph) else onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        inferred = model
    types = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor_type = info.type.tensor_type
        dims = None
        if tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        types[info.name] = (tensor_type.elem_type, dims)
    return types
