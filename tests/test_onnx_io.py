"""Loading and writing ONNX files: external data stays inside the model's folder, and on disk."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from surgeon import SurgeonError, onnx_io
from surgeon.onnx_io import check_model, external_tensors, load_model, save_model, stripped, tensor_array
from surgeon.verify import onnxruntime_runner


def save_with_external_data(folder, location="weights.bin"):
    weight = numpy_helper.from_array(np.arange(1024, dtype=np.float32).reshape(32, 32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 32])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 32])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location=location, size_threshold=0)
    return path


def relocate(path, location):
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(model, str(path))


def test_external_data_inside_the_folder_loads_and_stays_on_disk(tmp_path):
    model = load_model(save_with_external_data(tmp_path))
    weight = model.graph.initializer[0]
    assert not weight.HasField("raw_data") and external_tensors(model) == [weight]
    values = tensor_array(weight)
    assert isinstance(values, np.memmap) and values[3, 5] == 3 * 32 + 5
    assert model.ByteSize() < 1024  # the message holds no weights


def test_a_model_with_external_data_is_checked_and_run_from_its_folder(tmp_path):
    model = load_model(save_with_external_data(tmp_path))
    check_model(model)
    x = np.ones((1, 32), np.float32)
    expected = x @ np.arange(1024, dtype=np.float32).reshape(32, 32)
    np.testing.assert_array_equal(onnxruntime_runner(model)([[x]])[0][0], expected)
    broken = stripped(model)
    broken.graph.node[0].input[0] = "missing"
    with pytest.raises(onnx.checker.ValidationError, match="missing"):
        check_model(broken)


def test_a_small_model_with_external_data_is_written_in_one_file(tmp_path):
    model = load_model(save_with_external_data(tmp_path / "source"))
    out = tmp_path / "out"
    out.mkdir()
    save_model(model, out / "model.onnx")
    assert [path.name for path in out.iterdir()] == ["model.onnx"]
    written = onnx.load(str(out / "model.onnx"))
    assert numpy_helper.to_array(written.graph.initializer[0])[3, 5] == 3 * 32 + 5
    assert external_tensors(model)  # still read from the source


def test_a_large_model_is_written_with_its_data_file_and_read_from_there(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_io, "INLINE_LIMIT_BYTES", 1000)  # the 4 KB weight counts as large
    model = load_model(save_with_external_data(tmp_path / "source"))
    inline = numpy_helper.from_array(np.full((16, 32), 2, np.float32), "inline")  # held in the message: moved out
    model.graph.initializer.append(inline)
    model.graph.node.append(helper.make_node("Add", ["y", "inline"], ["z"]))
    model.graph.output[0].name = "z"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 16
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 16
    out = tmp_path / "out"
    out.mkdir()
    save_model(model, out / "model.onnx")
    assert sorted(path.name for path in out.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert (out / "model.onnx").stat().st_size < 1024
    offsets = [int(next(e.value for e in t.external_data if e.key == "offset")) for t in external_tensors(model)]
    assert len(offsets) == 2 and all(offset % onnx_io.ALIGNMENT == 0 for offset in offsets)
    (tmp_path / "source" / "weights.bin").unlink()  # from now on the model reads the written file
    assert tensor_array(model.graph.initializer[0])[3, 5] == 3 * 32 + 5
    written = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(str(out / "model.onnx"))
    np.testing.assert_array_equal(numpy_helper.to_array(written.graph.initializer[1]), np.full((16, 32), 2))
    x = np.ones((16, 32), np.float32)
    expected = x @ np.arange(1024, dtype=np.float32).reshape(32, 32) + 2
    np.testing.assert_array_equal(onnxruntime_runner(model)([[x]])[0][0], expected)


def test_the_shape_budget_sees_a_model_with_weights_on_disk(tmp_path):
    model = load_model(save_with_external_data(tmp_path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2**20
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 2**20
    assert onnx_io.oversized_tensor(model, 2**20) == "tensor 'x' of shape [1048576, 32] would take 0.125 GiB"


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


@pytest.mark.parametrize("with_length", [True, False])
def test_a_truncated_data_file_is_named_at_load(tmp_path, with_length):
    path = save_with_external_data(tmp_path)
    if not with_length:  # the data then runs to the end of the file: its size comes from the tensor's shape
        model = onnx.load(str(path), load_external_data=False)
        for tensor in model.graph.initializer:
            del tensor.external_data[:]
            tensor.external_data.add(key="location", value="weights.bin")
        onnx.save(model, str(path))
    data = tmp_path / "weights.bin"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(SurgeonError, match=r"external data of tensor 'w' at 'weights.bin': the file holds 100 "
                                           r"bytes, and the tensor's data would end at byte \d+ \(a truncated"):
        load_model(path)


def test_an_invalid_graph_is_named(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["missing"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    path = tmp_path / "invalid.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    with pytest.raises(SurgeonError, match=f"{path}: invalid ONNX model"):
        load_model(path)
