"""opset_compat: fit a model to the operator versions the installed onnx-tf converts.

onnx-tf converts a node only when it implements the version of the
operator's schema in force at the model's opset (see the converter's
``support`` module).
Modern exports fall outside that set: onnx-tf 1.10 has no Squeeze-13 or
Unsqueeze-13, so nearly every model exported at opset 13 or later fails, and
no LayerNormalization (opset 17) or Gelu (opset 20) at all.

This pass picks the opset, at most the model's, that leaves the fewest nodes
onnx-tf cannot convert (the highest among equals), and brings each node
there:

- a node whose schema changed between the two opsets steps down its
  versions one at a time: free where the versions differ in types only
  (the types the model records are checked), dropping attributes left at
  their defaults, or through an adapter where the schemas differ (axes and
  split inputs become attributes, Softmax's axis, Resize's optional inputs,
  Pad's axes, Shape's start and end, ceil-mode pooling, ...);
- an operator onnx-tf lacks (LayerNormalization, RMSNormalization,
  GroupNormalization, Gelu, Mish), or one that does not exist yet at the
  opset chosen (Trilu, HardSwish, CastLike: PyTorch's causal attention at
  opset 14 holds both Trilu-14 and Squeeze-13, and onnx-tf converts Squeeze
  only at opsets below 13), is decomposed into primitives onnx-tf has; the
  deprecated Upsample and Scatter become Resize and ScatterElements.

A node it cannot bring within the set (a custom domain, an operator with no
handler and no decomposition, axes computed at run time) stays as it is, and
an opset where its schema would change is ruled out; it is named in the log,
the details and the detector's findings. When onnx-tf refuses a model, the
converter names the nodes and the host names this pass (it declares that it
fixes nodes the converter cannot convert) with what its detector finds there.

This module plans (which opset, what becomes of each node) and runs the
pass; ``adapt`` steps a node down one schema version, ``decompose`` writes
operators with primitives, ``edits`` is what both hand back, and
``schemas`` what they read of operator schemas and element types.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import onnx
import onnx_graphsurgeon as gs

from surgeon import Finding, Hazard, RewritePass, SurgeonError, hookimpl
from surgeon.graph import Builder, Unfixable, describe, is_empty, names_in
from surgeon.shapes import inferred_types
from surgeon_plugins.converters.onnx_tf.support import ONNX_DOMAINS, Handlers, handlers, since_version
from surgeon_plugins.passes.opset_compat.adapt import step_down
from surgeon_plugins.passes.opset_compat.decompose import DECOMPOSITIONS
from surgeon_plugins.passes.opset_compat.edits import Edit
from surgeon_plugins.passes.opset_compat.schemas import is_onnx

log = logging.getLogger("surgeon")


@dataclass(frozen=True)
class OpsetCompatOptions:
    opset: int | None = field(default=None, metadata={
        "doc": "the highest opset to bring the model to (default: the model's own, lowered only as far as "
               "onnx-tf needs)"})

    def __post_init__(self) -> None:
        if self.opset is not None and self.opset < 1:
            raise ValueError("opset must be 1 or more")


@dataclass
class Rewrite:
    """What becomes of one node: ``source`` (e.g. Squeeze-13) becomes ``target``."""

    graph: gs.Graph
    node: gs.Node
    source: str
    target: str
    edits: list[Edit]


@dataclass
class Blocked:
    """A node left as it is, and why."""

    node: gs.Node
    source: str
    reason: str


@dataclass
class Plan:
    """The opset to bring the model to, and what happens to each node on the way."""

    opset: int
    target: int
    rewrites: list[Rewrite] = field(default_factory=list)
    blocked: list[Blocked] = field(default_factory=list)
    unsupported: list[tuple[gs.Node, str]] = field(default_factory=list)  # as the model stands: node, "Op-N"

    @property
    def changes(self) -> bool:
        return self.target != self.opset or any(r.edits for r in self.rewrites)


# ---------------------------------------------------------------- reading the graph


def live_nodes(graph: gs.Graph) -> Iterator[tuple[gs.Graph, gs.Node]]:
    """Every node that still produces something, with the graph holding it, subgraphs included."""
    for node in graph.nodes:
        if not node.outputs:
            continue
        yield graph, node
        for value in node.attrs.values():
            for subgraph in value if isinstance(value, list) else [value]:
                if isinstance(subgraph, gs.Graph):
                    yield from live_nodes(subgraph)


def label(node: gs.Node, opset: int) -> str:
    """``Squeeze-13``: the operator and the version of its schema at ``opset``."""
    if not is_onnx(node):
        return f"{node.domain}.{node.op}"
    since = since_version(node.op, opset)
    return f"{node.op}-{since}" if since else node.op


# ---------------------------------------------------------------- planning


def node_rewrite(graph: gs.Graph, node: gs.Node, source: int, target: int, table: Handlers,
                 inferred: Mapping[str, int]) -> Rewrite | None:
    """What becomes of ``node`` when the model goes from opset ``source`` to ``target``; Unfixable when nothing
    works. ``inferred``: element types of tensors the model leaves untyped."""
    op, since, wanted = node.op, since_version(node.op, source), since_version(node.op, target)
    name = f"{op}-{since}"
    if wanted is not None and table.converts(op, wanted):  # (converts() is False for None too)
        if since == wanted:
            return None
        if since is None:  # the op is newer than the model's opset: there is no schema to step down from
            raise SurgeonError(f"{describe(node)}: {op} does not exist at the model's opset {source}")
        try:
            steps = step_down(node, since, wanted, inferred)
        except Unfixable as error:
            problem = f"{op}-{wanted}: {error}"
        else:
            whats = [step.what for step in steps if step.what]
            return Rewrite(graph, node, name, f"{op}-{wanted}" + (f" ({'; '.join(whats)})" if whats else ""),
                           [step.edit for step in steps])
    elif wanted is None:
        problem = f"{op} does not exist at opset {target}"
    else:
        problem = f"onnx-tf has no {op}-{wanted}"
    decomposition = DECOMPOSITIONS.get(op)
    if decomposition is None:
        raise Unfixable(problem)
    missing = [p for p in decomposition.primitives if not table.converts(p, since_version(p, target))]
    if missing:
        raise Unfixable(f"{problem}; its decomposition needs {missing[0]}, which onnx-tf does not convert at "
                        f"opset {target}")
    try:
        edit = decomposition.plan(node, since, target)
    except Unfixable as error:
        raise Unfixable(f"{problem}, and it cannot be decomposed: {error}") from None
    return Rewrite(graph, node, name, f"decomposed into {', '.join(decomposition.primitives)}", [edit])


def untyped_element_types(graph: gs.Graph, nodes: Sequence[tuple[gs.Graph, gs.Node]]) -> dict[str, int]:
    """Element types shape inference finds for the tensors of ``nodes`` that the model leaves untyped (an
    operator's older version may not take the type: Elu-6 has no bfloat16); empty when all are typed."""
    untyped = {tensor.name for _, node in nodes for tensor in (*node.inputs, *node.outputs)
               if not is_empty(tensor) and tensor.dtype is None}
    if not untyped:
        return {}
    return {name: elem for name, (elem, _) in inferred_types(graph).items() if name in untyped and elem}


def plan_at(nodes: Sequence[tuple[gs.Graph, gs.Node]], source: int, target: int, table: Handlers,
            plan: Plan, inferred: Mapping[str, int]) -> Plan | str:
    """``plan`` filled in for opset ``target``, or why ``target`` is ruled out: a node that would not be valid there."""
    for graph, node in nodes:
        try:
            rewrite = node_rewrite(graph, node, source, target, table, inferred)
        except Unfixable as error:
            if since_version(node.op, target) != since_version(node.op, source):
                return f"{describe(node)}, {label(node, source)}, cannot be brought to opset {target}: {error}"
            plan.blocked.append(Blocked(node, label(node, source), str(error)))
        else:
            if rewrite is not None:
                plan.rewrites.append(rewrite)
    return plan


def make_plan(graph: gs.Graph, options: OpsetCompatOptions) -> Plan:
    """The highest opset, at most the model's and ``options.opset``, leaving the fewest nodes onnx-tf cannot convert.

    A node left as it is must stay valid there: an opset where its schema changes is ruled out.
    """
    table = handlers()
    source = graph.opset
    nodes = list(live_nodes(graph))
    foreign = [Blocked(node, label(node, source), f"onnx-tf {table.version} has no handlers for the domain "
                       f"{node.domain!r}") for _, node in nodes if not is_onnx(node)]
    nodes = [(g, node) for g, node in nodes if is_onnx(node)]
    unsupported = [(node, label(node, source)) for _, node in nodes
                   if not table.converts(node.op, since_version(node.op, source))]
    unsupported += [(blocked.node, blocked.source) for blocked in foreign]
    top = min(source, options.opset or source)
    if top == source and len(unsupported) == len(foreign):
        return Plan(source, source, blocked=foreign, unsupported=unsupported)
    inferred = untyped_element_types(graph, nodes)
    best: Plan | None = None
    ruled_out: dict[int, str] = {}
    opsets = distinct_opsets({node.op for _, node in nodes}, top)
    for target in opsets:
        plan = plan_at(nodes, source, target, table, Plan(source, target, blocked=list(foreign),
                                                           unsupported=unsupported), inferred)
        if isinstance(plan, str):
            ruled_out[target] = plan
        elif best is None or len(plan.blocked) < len(best.blocked):
            best = plan
        if best is not None and len(best.blocked) == len(foreign):
            break
    if best is None:
        raise SurgeonError(f"opset_compat.opset: the model cannot be brought to opset {top} or below: "
                           f"{ruled_out[top]}", hint="leave opset_compat.opset unset")
    lower = [target for target in opsets if target < best.target]
    for blocked in best.blocked[len(foreign):]:
        blocked.reason = why_left(blocked, graph, source, lower, table, ruled_out, inferred)
    return best


def distinct_opsets(ops: set[str], top: int) -> list[int]:
    """The opsets from ``top`` down, without those where the operators (and what they decompose into) have the
    same versions as at a higher one: the plan there would be the same."""
    ops |= {primitive for op in ops if op in DECOMPOSITIONS for primitive in DECOMPOSITIONS[op].primitives}
    ordered = sorted(ops)
    seen, opsets = set(), []
    for opset in range(top, 0, -1):
        versions = tuple(since_version(op, opset) for op in ordered)
        if versions not in seen:
            seen.add(versions)
            opsets.append(opset)
    return opsets


def why_left(blocked: Blocked, graph: gs.Graph, source: int, lower: list[int], table: Handlers,
             ruled_out: dict[int, str], inferred: Mapping[str, int]) -> str:
    """Why a node stays unconverted: what goes wrong at the nearest lower opset where it would convert."""
    op = blocked.node.op
    for opset in lower:
        try:
            node_rewrite(graph, blocked.node, source, opset, table, inferred)
        except Unfixable as error:
            if table.converts(op, since_version(op, opset)):
                return str(error)
            continue
        if opset in ruled_out:
            return f"it would convert at opset {opset}, but {ruled_out[opset]}"
        return f"it would convert at opset {opset}, where more nodes would not"
    if op not in DECOMPOSITIONS and not table.versions.get(op):
        return f"opset_compat knows no decomposition of {op}"
    return blocked.reason


# ---------------------------------------------------------------- the pass


def set_opset(graph: gs.Graph, opset: int) -> None:
    graph.opset = opset
    for subgraph in graph.subgraphs(recursive=True):
        subgraph.opset = opset
    if graph.import_domains is not None:
        graph.import_domains = [onnx.helper.make_opsetid("", opset) if entry.domain in ONNX_DOMAINS else entry
                                for entry in graph.import_domains]


def fit(graph: gs.Graph, options: OpsetCompatOptions) -> dict | None:
    plan = make_plan(graph, options)
    for (source, reason), nodes in grouped((b.source, b.reason, b.node) for b in plan.blocked).items():
        log.warning("opset_compat: %s (%s) left as it is: %s", source, nodes_text(nodes), reason)
    if not plan.changes:
        return None
    graphs = {id(rewrite.graph): rewrite.graph for rewrite in plan.rewrites}
    taken = names_in(graph)  # shared: names stay unique across the model's graphs
    builders = {key: Builder(each, taken=taken, opset=plan.target) for key, each in graphs.items()}
    for rewrite in plan.rewrites:
        for edit in rewrite.edits:
            edit(rewrite.node, builders[id(rewrite.graph)])
    for each in graphs.values():  # drop the decomposed nodes, which later passes need not see
        each.nodes = [node for node in each.nodes if node.inputs or node.outputs]
    set_opset(graph, plan.target)
    unsupported = {id(node) for node, _ in plan.unsupported}
    changed = [r for r in plan.rewrites if r.edits or id(r.node) in unsupported]
    return {
        "opset": {"from": plan.opset, "to": plan.target},
        "rewritten": dict(Counter(f"{r.source} -> {r.target}" for r in changed)),
        "only_version_changed": len(plan.rewrites) - len(changed),
        "left": [f"{describe(b.node)}, {b.source}: {b.reason}" for b in plan.blocked],
    }


def outcomes(plan: Plan) -> dict[int, str]:
    """node id -> what the pass does about it, or why it cannot."""
    done = {id(r.node): f"opset_compat: {r.target}" for r in plan.rewrites}
    done.update({id(b.node): f"opset_compat cannot fix it: {b.reason}" for b in plan.blocked})
    return done


def grouped(items: Iterable[tuple[str, str, gs.Node]]) -> dict[tuple[str, str], list[gs.Node]]:
    """(label, message) -> the nodes it applies to."""
    groups: dict[tuple[str, str], list[gs.Node]] = defaultdict(list)
    for name, message, node in items:
        groups[(name, message)].append(node)
    return groups


def unsupported_groups(plan: Plan) -> list[tuple[str, str, list[gs.Node]]]:
    """(e.g. "Squeeze-13", why onnx-tf refuses it and what the pass does, nodes) per kind of unsupported node."""
    table, outcome = handlers(), outcomes(plan)

    def message(node: gs.Node) -> str:
        why = table.describe(node.op) if is_onnx(node) else f"onnx-tf has no handlers for the domain {node.domain!r}"
        return f"{why}; {outcome[id(node)]}"

    groups = grouped((name, message(node), node) for node, name in plan.unsupported)
    return [(name, text, nodes) for (name, text), nodes in groups.items()]


def nodes_text(nodes: list[gs.Node]) -> str:
    shown = ", ".join(describe(node) for node in nodes[:3])
    more = f" and {len(nodes) - 3} more" if len(nodes) > 3 else ""
    return f"{len(nodes)} node{'s' if len(nodes) > 1 else ''}: {shown}{more}"


def detect(graph: gs.Graph, options: OpsetCompatOptions) -> list[Finding]:
    try:
        plan = make_plan(graph, options)
    except SurgeonError as error:
        return [Finding(where=f"opset {graph.opset}", message=str(error))]
    blocked = {id(b.node) for b in plan.blocked}
    findings = [Finding(where=f"{name} ({nodes_text(nodes)})", message=message, nodes=tuple(n.name for n in nodes),
                        fixable=not any(id(node) in blocked for node in nodes))
                for name, message, nodes in unsupported_groups(plan)]
    unsupported = {id(node) for node, _ in plan.unsupported}
    if plan.target != plan.opset:
        along = Counter(f"{r.source} -> {r.target}" for r in plan.rewrites
                        if id(r.node) not in unsupported and r.edits)
        findings.append(Finding(where=f"opset {plan.opset}", message=(
            f"opset_compat lowers the model to opset {plan.target}"
            + (", adapting on the way " + "; ".join(f"{change} ({count})" for change, count in along.items())
               if along else ""))))
    return findings


@hookimpl
def surgeon_passes():
    return [RewritePass(name="opset_compat", doc="Bring every node to an operator version onnx-tf converts: lower "
                        "the opset, decompose what onnx-tf lacks (LayerNormalization, Gelu, ...).",
                        options=OpsetCompatOptions, run=fit, detect=detect,
                        fixes=frozenset({Hazard.UNCONVERTIBLE_NODE}), newest_opset=onnx.defs.onnx_opset_version())]
