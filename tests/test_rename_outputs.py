"""rename_outputs on small graphs written in ONNX text."""

import onnx_graphsurgeon as gs
import pytest

from surgeon import PluginError
from surgeon.testing import (apply_pass, apply_pass_with_record, assert_idempotent, assert_same_outputs,
                             find_pass, model_from_text)

EXPORTED = """
<ir_version: 8, opset_import: ["" : 13]>
exported (float[N, 4] "input.1", float[N, 4] images) => (float[N, 4] "/fc/Gemm_output_0", float[N, 4] add_17,
                                                          float[N, 4] "436", float[N, 4] logits)
{
    "/fc/Gemm_output_0" = Relu("input.1")
    add_17 = Add("input.1", images)
    "436" = Mul(images, images)
    logits = Sigmoid(images)
}
"""


@pytest.fixture
def exported():
    return model_from_text(EXPORTED)


def names(model):
    return [v.name for v in model.graph.input], [v.name for v in model.graph.output]


@pytest.mark.parametrize("name", ["add_17", "Gemm_3", "/fc/Gemm_output_0", "436", "input.1", "onnx::Conv_0",
                                  "x:0", "", "_private", "has space"])
def test_generated_or_invalid_names(name):
    from surgeon_plugins.passes.rename_outputs import is_good

    assert not is_good(name)


@pytest.mark.parametrize("name", ["logits", "images", "output_0", "result", "input", "CT_scan3d"])
def test_good_names(name):
    from surgeon_plugins.passes.rename_outputs import is_good

    assert is_good(name)


def test_generated_names_become_positional_and_good_names_stay(exported):
    rewritten, record = apply_pass_with_record("rename_outputs", exported)
    assert names(rewritten) == (["input_0", "images"], ["output_0", "output_1", "output_2", "logits"])
    assert record.renamed == {"input.1": "input_0", "/fc/Gemm_output_0": "output_0", "add_17": "output_1",
                              "436": "output_2"}
    assert record.nodes_added == record.nodes_removed == record.nodes_rewritten == 0
    assert_same_outputs(exported, rewritten, batch_sizes=[1, 3, 8])


def test_explicit_names_win_and_auto_can_be_turned_off(exported):
    rewritten = apply_pass("rename_outputs", exported, names="add_17:sum,images:pixels", auto="false")
    assert names(rewritten) == (["input.1", "pixels"], ["/fc/Gemm_output_0", "sum", "436", "logits"])
    assert_same_outputs(exported, rewritten, batch_sizes=[1, 3])


def test_idempotent(exported):
    assert_idempotent("rename_outputs", exported)
    assert_idempotent("rename_outputs", exported, names={"add_17": "sum"})


def test_detector_reports_each_generated_name_and_fixing_clears_it(exported):
    rename = find_pass("rename_outputs")
    options = rename.options()
    findings = rename.detect(gs.import_onnx(exported), options)
    assert [f.where for f in findings] == ["output '/fc/Gemm_output_0'", "output 'add_17'", "output '436'",
                                           "input 'input.1'"]
    assert findings[0].message == "generated or invalid name; would be renamed to 'output_0'"
    fixed = apply_pass(rename, exported)
    assert rename.detect(gs.import_onnx(fixed), options) == []


def test_name_taken_by_an_inner_tensor_gets_a_free_suffix():
    model = model_from_text("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[2] x) => (float[2] add_3) { output_0 = Relu(x)  add_3 = Add(output_0, x) }
    """)
    rewritten = apply_pass("rename_outputs", model)
    assert names(rewritten)[1] == ["output_0_1"]


@pytest.mark.parametrize(("names_option", "message"), [
    ("nothere:y", "no graph input or output is called 'nothere'"),
    ("add_17:9lives", "'9lives' is not a valid name"),
    ("add_17:r", "'r' would name two tensors"),
    ("add_17:y,x:y", "'y' would name two tensors"),
])
def test_bad_explicit_names_are_clear_errors(names_option, message):
    model = model_from_text("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[2] x) => (float[2] add_17) { r = Relu(x)  add_17 = Add(r, x) }
    """)
    with pytest.raises(PluginError, match=message):
        apply_pass("rename_outputs", model, names=names_option)
