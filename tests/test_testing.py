"""surgeon.testing's backend-suite helper, as plugin authors use it."""

from surgeon.plugin import NoOptions, RewritePass
from surgeon.testing import run_pass_on_backend_cases


def test_a_faithful_pass_keeps_every_backend_case():
    result = run_pass_on_backend_cases("rename_outputs", ("relu", "averagepool_2d_pads", "add"))
    assert result.failed == {} and len(result.passed) >= 5
    assert "test_relu" in result.passed
    assert result.touched == []  # the backend cases' names are already good


def test_a_pass_that_changes_the_meaning_fails_the_cases_it_touches():
    def relu_to_abs(graph, options):
        for node in graph.nodes:
            if node.op == "Relu":
                node.op = "Abs"

    wrong = RewritePass(name="relu_to_abs", doc="Changes the meaning.", run=relu_to_abs, options=NoOptions)
    result = run_pass_on_backend_cases(wrong, ("relu", "add"))
    assert "test_relu" in result.touched
    assert result.failed["test_relu"].startswith("output 0 differs by")
    assert "test_add" in result.passed
    assert "failed" in result.summary()
