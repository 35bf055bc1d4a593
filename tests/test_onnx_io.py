"""Loading ONNX files: external data stays inside the model's folder."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from surgeon import SurgeonError
from surgeon.onnx_io import load_model


def save_with_external_data(folder, location="weights.bin"):
    weight = numpy_helper.from_array(np.arange(1024, dtype=np.float32).reshape(32, 32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 32])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 32])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location=location, size_threshold=0)
    return path


def relocate(path, location):
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(model, str(path))


def test_external_data_inside_the_folder_loads(tmp_path):
    model = load_model(save_with_external_data(tmp_path))
    assert numpy_helper.to_array(model.graph.initializer[0])[3, 5] == 3 * 32 + 5


@pytest.mark.parametrize("location", ["../weights.bin", "sub/../../weights.bin", "/etc/passwd"])
def test_locations_leaving_the_folder_are_refused(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    path = save_with_external_data(folder)
    (tmp_path / "weights.bin").write_bytes((folder / "weights.bin").read_bytes())
    relocate(path, location)
    with pytest.raises(SurgeonError, match="must be a relative path inside the model's folder"):
        load_model(path)


def test_a_symlink_leaving_the_folder_is_refused(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    path = save_with_external_data(folder)
    outside = tmp_path / "outside.bin"
    (folder / "weights.bin").rename(outside)
    (folder / "weights.bin").symlink_to(outside)
    with pytest.raises(SurgeonError, match=r"resolves to .*outside.bin, outside the model's folder"):
        load_model(path)


def test_missing_external_data_is_named(tmp_path):
    path = save_with_external_data(tmp_path)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(SurgeonError, match="external data of tensor 'w' at 'weights.bin': no such file"):
        load_model(path)


def test_an_invalid_graph_is_named(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["missing"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    path = tmp_path / "invalid.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    with pytest.raises(SurgeonError, match=f"{path}: invalid ONNX model"):
        load_model(path)
