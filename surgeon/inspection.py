"""``surgeon plugins`` and ``surgeon inspect``: what is installed, what a model holds."""

from __future__ import annotations

import dataclasses
import typing
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from surgeon.discovery import discover
from surgeon.errors import blamed_on
from surgeon.options import type_name
from surgeon.plugin import RewritePass, option_defaults


def list_plugins(plugin_paths: list[Path]) -> list[dict[str, Any]]:
    """Every installed plugin with its kind, origin, doc and options; broken modules last."""
    registry = discover(plugin_paths)
    listing: list[dict[str, Any]] = []
    for plugin in registry.all():
        hints = typing.get_type_hints(plugin.options)
        defaults = option_defaults(plugin.options)
        listing.append({
            "name": plugin.name,
            "kind": plugin.kind,
            "doc": plugin.doc,
            "origin": registry.origin[plugin.name],
            "options": [
                {"name": option.name, "type": type_name(hints[option.name]), "default": defaults[option.name],
                 "doc": option.metadata.get("doc", "")}
                for option in dataclasses.fields(plugin.options)
            ],
        })
    listing.extend({"name": None, "kind": "broken", "origin": b.origin, "doc": b.reason, "options": []}
                   for b in registry.broken)
    return listing


def inspect(path: Path, plugin_paths: list[Path]) -> dict[str, Any]:
    """For an ONNX file: inputs, outputs, opset, op histogram and the hazards every installed
    pass detects. For a SavedModel folder: signatures, ops, Python callbacks, and the versions that made
    it (TensorFlow from saved_model.pb, the rest from the record surgeon writes into it)."""
    if path.is_dir():
        from surgeon.saved_model_info import describe

        return {"kind": "saved_model", **describe(path)}
    from surgeon.onnx_io import load_model, real_inputs

    model = load_model(path)
    registry = discover(plugin_paths)
    graph = model.graph
    return {
        "kind": "onnx",
        "path": str(path),
        "opset": {entry.domain or "ai.onnx": entry.version for entry in model.opset_import},
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [_value(v) for v in real_inputs(model)],
        "outputs": [_value(v) for v in graph.output],
        "nodes": len(graph.node),
        "ops": dict(Counter(node.op_type for node in graph.node).most_common()),
        "findings": findings(model, registry.passes.values()),
        "broken_plugins": [{"origin": b.origin, "reason": b.reason} for b in registry.broken],
    }


def findings(model: Any, passes: Iterable[RewritePass]) -> list[dict[str, Any]]:
    """Run the detector of each of ``passes`` with default options."""
    from surgeon.rewrite import import_graph

    graph = import_graph(model)
    found: list[dict[str, Any]] = []
    for rewrite in passes:
        with blamed_on(rewrite.name, "detect()"):
            hazards = rewrite.detect(graph, rewrite.options())
        found.extend({"plugin": rewrite.name, "where": h.where, "message": h.message, "nodes": list(h.nodes),
                      "fixable": h.fixable} for h in hazards)
    return found


def _value(value: Any) -> dict[str, Any]:
    import onnx

    tensor_type = value.type.tensor_type
    dims = [dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?") for dim in tensor_type.shape.dim]
    return {
        "name": value.name,
        "dtype": onnx.TensorProto.DataType.Name(tensor_type.elem_type).lower(),
        "shape": dims if tensor_type.HasField("shape") else None,
    }
