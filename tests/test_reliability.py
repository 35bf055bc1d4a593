"""Attacks on the tool: hostile files, failing disks, interrupted runs."""

import onnx
from onnx import TensorProto, helper

from surgeon.testing import model_from_text

EXPLODING = helper.make_model(
    helper.make_graph([helper.make_node("ConstantOfShape", ["shape"], ["y"])], "explode", [],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", "columns"])],
                      [helper.make_tensor("shape", TensorProto.INT64, [2], [2**30, 2**30])]),
    opset_imports=[helper.make_opsetid("", 13)])


def test_a_model_whose_shapes_explode_is_refused_before_anything_allocates(tmp_path, cli):
    path = tmp_path / "explode.onnx"
    onnx.save(EXPLODING, str(path))
    result = cli("run", path, "-o", tmp_path / "out")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()
    assert f"surgeon: error: {path}: tensor 'y' of shape [1073741824, 1073741824] would take 4.29e+09 GiB, over " \
           "the budget of 8 GiB" in last
    assert not (tmp_path / "out").exists()
    inspected = cli("inspect", path)
    assert inspected.returncode == 0 and "ConstantOfShape 1" in inspected.stdout


def test_the_budget_is_configurable(tmp_path, cli):
    path = tmp_path / "fixed.onnx"
    onnx.save(model_from_text("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[2, 64] x) => (float[2, 64] y) { y = Relu(x) }
    """), str(path))
    result = cli("run", path, "-o", tmp_path / "out", "--format", "onnx", "--max-tensor-gib", "1e-7")
    assert result.returncode == 1 and "tensor 'x' of shape [2, 64] would take" in result.stderr
    assert cli("run", path, "-o", tmp_path / "out", "--format", "onnx", "--max-tensor-gib", "1e-6").returncode == 0
