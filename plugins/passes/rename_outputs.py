"""rename_outputs: stable graph input and output names.

The names of a model's inputs and outputs become the keys of the SavedModel
signature and the tensor names in a Triton config. Exporters generate names
like ``add_17``, ``/fc/Gemm_output_0`` or ``436``; TensorFlow also rewrites
characters it dislikes. This pass applies explicit renames and, by default,
gives generated or invalid names the stable form ``output_N`` / ``input_N``
(N: the position), leaving good names alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import onnx_graphsurgeon as gs

from surgeon import Finding, RewritePass, SurgeonError, hookimpl
from surgeon.naming import fresh_name

GOOD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
NUMBERED = re.compile(r"(?P<stem>[A-Za-z]+)_\d+")


@dataclass(frozen=True)
class RenameOptions:
    names: dict[str, str] = field(default_factory=dict, metadata={"doc": "explicit renames OLD:NEW"})
    auto: bool = field(default=True, metadata={"doc": "rename generated names to input_N / output_N"})
    input_prefix: str = field(default="input", metadata={"doc": "stem of generated input names"})
    output_prefix: str = field(default="output", metadata={"doc": "stem of generated output names"})


@lru_cache(maxsize=1)
def onnx_op_names() -> frozenset[str]:
    import onnx.defs

    return frozenset(schema.name.lower() for schema in onnx.defs.get_all_schemas_with_history())


def is_good(name: str) -> bool:
    """A valid signature key and Triton tensor name that an exporter did not make up."""
    if not GOOD_NAME.fullmatch(name):
        return False
    numbered = NUMBERED.fullmatch(name)
    return not (numbered and numbered["stem"].lower() in onnx_op_names())


def plan(graph: gs.Graph, options: RenameOptions) -> dict[int, tuple[gs.Tensor, str, str]]:
    """tensor id -> (tensor, new name, why) for every graph input and output to rename."""
    io = {
        id(tensor): (tensor, prefix, index)
        for tensors, prefix in ((graph.outputs, options.output_prefix), (graph.inputs, options.input_prefix))
        for index, tensor in enumerate(tensors)
    }
    by_name = {tensor.name: tensor for tensor, _, _ in io.values()}
    renames: dict[int, tuple[gs.Tensor, str, str]] = {}
    for old, new in options.names.items():
        if old not in by_name:
            if new in by_name:
                continue  # applied before: renaming twice changes nothing
            raise SurgeonError(f"names: no graph input or output is called {old!r} (they are: {', '.join(by_name)})")
        if not GOOD_NAME.fullmatch(new):
            raise SurgeonError(f"names: {new!r} is not a valid name (letters, digits and _, starting with a letter)")
        renames[id(by_name[old])] = (by_name[old], new, "renamed as asked")
    inner_names = set(graph.tensors()) - set(by_name)
    new_names = [new for _, new, _ in renames.values()]
    clashes = [new for new in new_names if new in inner_names or new_names.count(new) > 1]
    if clashes:
        raise SurgeonError(f"names: {clashes[0]!r} would name two tensors of the graph")
    taken = inner_names | (set(by_name) - {tensor.name for tensor, _, _ in renames.values()})
    taken |= set(new_names)
    if options.auto:
        for key, (tensor, prefix, index) in io.items():
            if key in renames or is_good(tensor.name):
                continue
            new = fresh_name(f"{prefix}_{index}", taken)
            renames[key] = (tensor, new, "generated or invalid name")
    return renames


def rename(graph: gs.Graph, options: RenameOptions) -> None:
    for tensor, new, _ in plan(graph, options).values():
        tensor.name = new


def detect(graph: gs.Graph, options: RenameOptions) -> list[Finding]:
    return [
        Finding(where=f"{'input' if any(t is tensor for t in graph.inputs) else 'output'} {tensor.name!r}",
                message=f"{why}; would be renamed to {new!r}")
        for tensor, new, why in plan(graph, options).values()
    ]


@hookimpl
def surgeon_passes():
    return [RewritePass(name="rename_outputs", doc="Rename graph inputs and outputs: as asked, and generated names to input_N / output_N.",
                        options=RenameOptions, run=rename, detect=detect)]
