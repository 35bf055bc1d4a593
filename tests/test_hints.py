"""A failed run names exactly the passes that fix its failure: by the hazard they declare, and, when the error
names the ONNX nodes at fault, only passes whose detectors find something at those nodes."""

from __future__ import annotations

import onnx

from surgeon import Finding, Hazard, RewritePass, SurgeonError
from surgeon.pipeline import Plan, with_fixes_named
from surgeon.plugin import Source
from surgeon.testing import model_from_text

MODEL = model_from_text("""
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4] x) => (float[1, 4] y)
{
    r = Relu(x)
    y = Neg(r)
}
""")


def named_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    for index, node in enumerate(model.graph.node):
        node.name = f"n{index}"
    return model


def finding_at(node: str, message: str, fixable: bool = True):
    def detect(graph, options):
        return [Finding(where=f"node {node!r}", message=message, nodes=(node,), fixable=fixable)]
    return detect


def rewrite(name: str, fixes: set[Hazard], detect=None) -> RewritePass:
    return RewritePass(name=name, doc=name, run=lambda graph, options: None, fixes=frozenset(fixes),
                       **({"detect": detect} if detect else {}))


def plan(ran: list[RewritePass], idle: list[RewritePass]) -> Plan:
    source = Source(name="src", doc="", accepts=lambda spec: True, load=lambda spec, options, ctx: MODEL)
    return Plan(source=source, passes=[(p, p.options()) for p in ran], writers=[], converter=None, options={},
                idle_passes=idle)


def hint(error: SurgeonError, ran: list[RewritePass], idle: list[RewritePass]) -> str | None:
    return with_fixes_named(error, named_nodes(MODEL), plan(ran, idle)).hint


def test_an_error_without_a_hazard_names_no_pass():
    relu_fix = rewrite("relu_fix", {Hazard.UNCONVERTIBLE_NODE}, finding_at("n0", "a Relu"))
    assert hint(SurgeonError("signature keys are wrong"), [], [relu_fix]) is None


def test_only_passes_that_fix_the_hazard_are_named():
    relu_fix = rewrite("relu_fix", {Hazard.UNCONVERTIBLE_NODE}, finding_at("n0", "a Relu"))
    batch_fix = rewrite("batch_fix", {Hazard.FIXED_BATCH}, finding_at("n0", "batch fixed at 1"))
    text = hint(SurgeonError("failed", hazard=Hazard.UNCONVERTIBLE_NODE), [], [relu_fix, batch_fix])
    assert text == "add relu_fix to --plugins, which detects node 'n0': a Relu"


def test_a_failure_at_a_node_names_only_passes_that_find_something_there():
    at_relu = rewrite("at_relu", {Hazard.UNCONVERTIBLE_NODE}, finding_at("n0", "a Relu"))
    at_neg = rewrite("at_neg", {Hazard.UNCONVERTIBLE_NODE}, finding_at("n1", "a Neg"))
    error = SurgeonError("conversion failed at 'n1'", hazard=Hazard.UNCONVERTIBLE_NODE, nodes=["n1"])
    assert hint(error, [], [at_relu, at_neg]) == "add at_neg to --plugins, which detects node 'n1': a Neg"
    nowhere = SurgeonError("conversion failed at 'n9'", hazard=Hazard.UNCONVERTIBLE_NODE, nodes=["n9"])
    assert hint(nowhere, [], [at_relu, at_neg]) is None


def test_a_pass_that_ran_and_left_the_hazard_says_so_with_its_detector():
    at_neg = rewrite("at_neg", {Hazard.UNCONVERTIBLE_NODE}, finding_at("n1", "cannot rewrite it: unknown shape"))
    error = SurgeonError("failed", hazard=Hazard.UNCONVERTIBLE_NODE, nodes=["n1"], hint="--debug shows more")
    assert hint(error, [at_neg], []) == (
        "at_neg ran but left node 'n1': cannot rewrite it: unknown shape; --debug shows more")
    quiet = rewrite("quiet", {Hazard.PYTHON_CALLBACK})
    assert hint(SurgeonError("PyFunc", hazard=Hazard.PYTHON_CALLBACK), [quiet], []) == (
        "quiet ran but left it: `surgeon inspect MODEL.onnx` says why")


def test_an_idle_pass_that_cannot_fix_what_it_finds_is_not_asked_for():
    stuck = rewrite("stuck", {Hazard.UNCONVERTIBLE_NODE}, finding_at("n1", "cannot rewrite it: unknown shape", False))
    error = SurgeonError("failed", hazard=Hazard.UNCONVERTIBLE_NODE, nodes=["n1"])
    assert hint(error, [], [stuck]) == "stuck detects node 'n1': cannot rewrite it: unknown shape"


def test_an_idle_pass_whose_detector_finds_nothing_is_not_named():
    silent = rewrite("silent", {Hazard.PYTHON_CALLBACK})
    assert hint(SurgeonError("PyFunc", hazard=Hazard.PYTHON_CALLBACK), [], [silent]) is None


def test_a_broken_detector_does_not_hide_the_error():
    def broken(graph, options):
        raise RuntimeError("detector bug")

    error = SurgeonError("failed", hazard=Hazard.UNCONVERTIBLE_NODE)
    assert hint(error, [], [rewrite("broken", {Hazard.UNCONVERTIBLE_NODE}, broken)]) is None
    assert str(error) == "failed"
