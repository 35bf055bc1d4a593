"""A complete rewrite plugin: remove Identity nodes (they only rename a tensor).

    surgeon run model.onnx -o out/ --plugin-path examples/drop_identity.py --plugins drop_identity
"""

from dataclasses import dataclass, field

from surgeon import Finding, RewritePass, hookimpl


@dataclass(frozen=True)
class Options:
    keep_outputs: bool = field(default=True, metadata={"doc": "keep Identities that produce graph outputs"})


def removable(graph, options):
    outputs = {id(t) for t in graph.outputs}
    return [n for n in graph.nodes if n.op == "Identity" and not (options.keep_outputs and id(n.outputs[0]) in outputs)]


def drop_identities(graph, options):
    for node in removable(graph, options):
        source, alias = node.inputs[0], node.outputs[0]
        for consumer in list(alias.outputs):
            consumer.inputs[consumer.inputs.index(alias)] = source
        graph.outputs = [source if t is alias else t for t in graph.outputs]
        node.outputs.clear()  # cleanup removes the node


def detect(graph, options):
    return [Finding(where=node.name or node.outputs[0].name, message="Identity node") for node in removable(graph, options)]


@hookimpl
def surgeon_passes():
    return [RewritePass(name="drop_identity", doc="Remove Identity nodes.", options=Options,
                        run=drop_identities, detect=detect)]
