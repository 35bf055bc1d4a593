"""The serving layout (plugins/converters/onnx_tf/layout.py) on small 2D and 3D CNNs, with real onnx-tf.

Each model is converted by onnx-tf 1.10 in this process and laid out for
serving; every SavedModel is then run from one fresh process, both as TF
Serving runs it (a session over the ``serve`` graph, fed and fetched by the
signature's tensor names) and through ``tf.saved_model.load(...).signatures``,
at batch 1 and 3, and compared with onnxruntime on the ONNX model.

The CNNs hold what a served CNN has: convolutions with bias, padding and
stride, ReLU (and ReLU6 as a Clip, 2D), a residual Add, max pooling,
concatenation, an explicit Pad and a depthwise convolution (2D), average
pooling to a 2x2x2 map (3D), a flatten and a Gemm head; the 2D one also
returns a feature map, so that a transpose is due at an output too.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from surgeon.saved_model_info import pyfunc_calls, read_meta_graph, serving_ops, signatures

BATCHES = (1, 3)
ATOL, RTOL = 1e-4, 1e-3

SERVE = r"""
import json, sys
from pathlib import Path
import numpy as np
import tensorflow as tf
from surgeon.serving import run

jobs = json.loads(sys.argv[1])
for job in jobs:
    with np.load(job["feeds"]) as data:
        feeds = [[data[f"{batch}_{name}"] for name in job["inputs"]] for batch in job["batches"]]
    served = run(Path(job["model"]), feeds, job["inputs"], job["outputs"])  # the session, as TF Serving runs it
    signature = tf.saved_model.load(job["model"]).signatures["serving_default"]
    loaded = [[signature(**{key: tf.constant(array) for key, array in zip(job["keys"], feed)})[name].numpy()
               for name in job["outputs"]] for feed in feeds]
    arrays = {}
    for k, batch in enumerate(job["batches"]):
        if isinstance(served[k], str):
            raise SystemExit(f"{job['model']} at batch {batch}: {served[k]}")
        for m, name in enumerate(job["outputs"]):
            arrays[f"session_{batch}_{name}"] = served[k][m]
            arrays[f"loaded_{batch}_{name}"] = loaded[k][m]
    np.savez(job["results"], **arrays)
"""


# --------------------------------------------------------------------------- the models

def weight(generator: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(generator.normal(0, 0.3, shape).astype(np.float32), name)


def conv(generator, nodes, initializers, x: str, out: str, inputs: int, outputs: int, kernel: int,
         rank: int, **attributes) -> str:
    groups = attributes.get("group", 1)
    initializers += [weight(generator, f"{out}_w", outputs, inputs // groups, *[kernel] * rank),
                     weight(generator, f"{out}_b", outputs)]
    nodes.append(helper.make_node("Conv", [x, f"{out}_w", f"{out}_b"], [out], kernel_shape=[kernel] * rank,
                                  **attributes))
    return out


def cnn(rank: int) -> onnx.ModelProto:
    """A small CNN over ``rank`` spatial dimensions (2 or 3), with a symbolic batch; see the module doc."""
    generator = np.random.default_rng(rank)
    nodes: list = []
    initializers: list = []
    size, channels = (12, 3) if rank == 2 else (8, 2)
    pad = [1] * 2 * rank

    def relu(x: str, out: str) -> str:
        nodes.append(helper.make_node("Relu", [x], [out]))
        return out

    first = relu(conv(generator, nodes, initializers, "x", "c1", channels, 8, 3, rank, pads=pad), "r1")
    second = relu(conv(generator, nodes, initializers, first, "c2", 8, 8, 3, rank, pads=pad, strides=[2] * rank),
                  "r2")
    if rank == 2:
        nodes.append(helper.make_node("MaxPool", [first], ["p1"], kernel_shape=[3] * rank, strides=[2] * rank,
                                      pads=pad))
    else:
        nodes.append(helper.make_node("MaxPool", [first], ["p1"], kernel_shape=[2] * rank, strides=[2] * rank))
    nodes += [helper.make_node("Add", [second, "p1"], ["a1"]), helper.make_node("Relu", ["a1"], ["r3"]),
              helper.make_node("Concat", ["r3", "p1"], ["cat"], axis=1)]
    if rank == 2:
        initializers.append(numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"))
        nodes.append(helper.make_node("Pad", ["cat", "pads"], ["padded"]))
        initializers += [numpy_helper.from_array(np.array(value, np.float32), name)
                         for name, value in (("zero", 0.0), ("six", 6.0))]
        nodes.append(helper.make_node("Clip", [conv(generator, nodes, initializers, "padded", "c3", 16, 8, 3, rank),
                                               "zero", "six"], ["r4"]))  # ReLU6
        third = "r4"
        features = conv(generator, nodes, initializers, third, "features", 8, 8, 3, rank, pads=pad, group=8)
        nodes.append(helper.make_node("GlobalAveragePool", [features], ["pooled"]))
        flat_size = 8
    else:  # a 2x2x2 map to flatten (channels first, as ONNX flattens)
        nodes.append(helper.make_node("AveragePool", ["cat"], ["pooled"], kernel_shape=[2] * rank,
                                      strides=[2] * rank))
        flat_size = 16 * 2 ** rank
    initializers += [weight(generator, "head_w", 5, flat_size), weight(generator, "head_b", 5)]
    nodes += [helper.make_node("Flatten", ["pooled"], ["flat"]),
              helper.make_node("Gemm", ["flat", "head_w", "head_b"], ["logits"], transB=1)]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])]
    if rank == 2:
        outputs.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 8, 6, 6]))
    graph = helper.make_graph(nodes, f"cnn{rank}d", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, *[size] * rank])], outputs,
        initializers)
    return checked(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def mlp() -> onnx.ModelProto:
    """No convolution: MatMul, Add, a Transpose of its own, Softmax."""
    generator = np.random.default_rng(0)
    graph = helper.make_graph([
        helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["h"]),
        helper.make_node("Transpose", ["h"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Softmax", ["t"], ["y"], axis=-1),
    ], "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 4])],
        [weight(generator, "w", 6, 6), weight(generator, "b", 6)])
    return checked(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def checked(model: onnx.ModelProto) -> onnx.ModelProto:
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


# --------------------------------------------------------------------------- converting and serving

def onnx_tf_conversion(model: onnx.ModelProto):
    """``convert(device, folder)`` for ``write_for_serving``: the converter's own onnx-tf conversion of ``model``
    for that device."""
    from surgeon_plugins.converters.onnx_tf import OnnxTfOptions, to_saved_model

    def convert(device: str, folder: Path) -> None:
        to_saved_model(model, OnnxTfOptions(), folder, device)

    return convert


def feeds(model: onnx.ModelProto) -> dict[int, list[np.ndarray]]:
    generator = np.random.default_rng(7)
    shapes = [[dim.dim_value for dim in value.type.tensor_type.shape.dim][1:] for value in model.graph.input]
    return {batch: [generator.normal(0, 1, (batch, *shape)).astype(np.float32) for shape in shapes]
            for batch in BATCHES}


def expected(model: onnx.ModelProto, feed: list[np.ndarray]) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, dict(zip([value.name for value in model.graph.input], feed)))


class Served:
    """The SavedModels written for the tests, what the layout rewrite said, and what a fresh process computed."""

    def __init__(self, folder: Path) -> None:
        from surgeon_plugins.converters.onnx_tf.layout import optimize_for_serving, write_for_serving

        self.folder = folder
        self.models = {"2d": cnn(2), "3d": cnn(3), "mlp": mlp()}
        self.details: dict[str, dict] = {}
        for name in ("2d", "3d", "mlp"):
            self.details[name] = write_for_serving(self.models[name], onnx_tf_conversion(self.models[name]),
                                                   folder / name)
            # what the converter wrote before: the serving contract to keep
            onnx_tf_conversion(self.models[name])("CPU", folder / f"{name}_onnx_tf")
        # onnx-tf's conversions laid out directly: channels-first for a GPU, and one without convolutions
        onnx_tf_conversion(self.models["2d"])("CUDA", folder / "2d_channels_first")
        self.details["2d_gpu"] = optimize_for_serving(folder / "2d_channels_first", folder / "2d_gpu", "GPU")
        self.details["mlp_forced"] = optimize_for_serving(folder / "mlp_onnx_tf", folder / "mlp_forced")
        self.models |= {"2d_gpu": self.models["2d"], "mlp_forced": self.models["mlp"]}
        self.results = self.serve([name for name in self.models if name != "2d_gpu" or onednn()])

    def serve(self, names: list[str]) -> dict[str, dict[str, np.ndarray]]:
        jobs = []
        for name in names:
            model = self.models[name]
            data = feeds(model)
            inputs = [value.name for value in model.graph.input]
            np.savez(self.folder / f"{name}_feeds.npz",
                     **{f"{batch}_{input_name}": array for batch, feed in data.items()
                        for input_name, array in zip(inputs, feed)})
            jobs.append({"model": str(self.folder / name), "feeds": str(self.folder / f"{name}_feeds.npz"),
                         "results": str(self.folder / f"{name}_results.npz"), "inputs": inputs, "keys": inputs,
                         "outputs": [value.name for value in model.graph.output], "batches": list(BATCHES)})
        finished = subprocess.run([sys.executable, "-c", SERVE, json.dumps(jobs)], capture_output=True, text=True,
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        assert finished.returncode == 0, finished.stderr[-3000:]
        results = {}
        for job, name in zip(jobs, names):
            with np.load(job["results"]) as data:
                results[name] = dict(data)
        return results


def onednn() -> bool:
    """Whether TensorFlow runs with oneDNN here, which runs channels-first convolutions on a CPU."""
    return platform.machine().lower() in ("x86_64", "amd64") and os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return Served(tmp_path_factory.mktemp("layout"))


def function_body(path: Path):
    """The library function of the SavedModel at ``path`` that holds its ops (the largest)."""
    return max(read_meta_graph(path).graph_def.library.function, key=lambda function: len(function.node_def))


def data_formats(path: Path, *ops: str) -> set[str]:
    """The data formats of the ``ops`` nodes of the SavedModel at ``path`` (saving leaves defaults out)."""
    from surgeon_plugins.converters.onnx_tf.graph_rewrites import data_format

    return {data_format(node) for node in function_body(path).node_def if node.op in ops}


def transposes_inside(path: Path) -> list[str]:
    """The Transpose nodes that neither read an input of the model nor make one of its outputs."""
    body = function_body(path)
    arguments = {argument.name for argument in body.signature.input_arg}
    nodes = {node.name: node for node in body.node_def}
    returned = {value.split(":")[0] for value in body.ret.values()}
    while True:  # through the Identity and IdentityN nodes in front of the outputs
        more = {tensor.split(":")[0] for name in returned if name in nodes
                and nodes[name].op in ("Identity", "IdentityN") for tensor in nodes[name].input} - returned
        if not more:
            break
        returned |= more
    return [node.name for node in body.node_def if node.op == "Transpose"
            and node.input[0].split(":")[0] not in arguments and node.name not in returned]


# --------------------------------------------------------------------------- the tests

@pytest.mark.tf
@pytest.mark.parametrize("name", ["2d", "3d", "2d_gpu", "mlp", "mlp_forced"])
def test_serves_what_onnxruntime_computes(served: Served, name: str) -> None:
    if name not in served.results:
        pytest.skip("a CPU runs the channels-first layout only with oneDNN")
    model = served.models[name]
    for batch, feed in feeds(model).items():
        for output, want in zip(model.graph.output, expected(model, feed)):
            for way in ("session", "loaded"):
                got = served.results[name][f"{way}_{batch}_{output.name}"]
                np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL,
                                           err_msg=f"{name}, {way}, batch {batch}, {output.name}")


@pytest.mark.tf
@pytest.mark.parametrize("name", ["2d", "3d", "2d_gpu", "mlp", "mlp_forced"])
def test_keeps_the_serving_contract(served: Served, name: str) -> None:
    model = served.models[name]
    meta_graph = read_meta_graph(served.folder / name)
    assert pyfunc_calls(meta_graph) == []
    before = read_meta_graph(served.folder / f"{name.split('_')[0]}_onnx_tf")
    assert signatures(meta_graph) == signatures(before)
    assert signatures(meta_graph)["serving_default"]["inputs"] == [
        {"name": value.name, "dtype": "float32", "shape": [None, *[dim.dim_value for dim in
                                                                   value.type.tensor_type.shape.dim[1:]]]}
        for value in model.graph.input]


@pytest.mark.tf
def test_2d_cnn_is_channels_last_between_its_inputs_and_outputs(served: Served) -> None:
    details = served.details["2d"]
    assert details["rewritten"] and details["layout"] == "channels-last"
    ops = serving_ops(read_meta_graph(served.folder / "2d"))
    assert transposes_inside(served.folder / "2d") == []
    assert ops["Transpose"] == 2  # the input, and the feature map returned
    assert ops["Pad"] + ops["PadV2"] == 0  # explicit padding in the convolutions and the max pooling
    assert ops["BiasAdd"] == 5  # the remapper fuses them into the convolutions (and the Gemm)
    assert data_formats(served.folder / "2d", "Conv2D", "DepthwiseConv2dNative", "MaxPool") == {"NHWC"}
    assert details["ops_after"]["Transpose"] == 2 and details["pads_folded"] == 5 and details["relu6s"] == 1


@pytest.mark.tf
def test_3d_cnn_is_channels_last_and_keeps_the_pad_conv3d_cannot_take(served: Served) -> None:
    details = served.details["3d"]
    assert details["rewritten"] and details["converted"] == 2  # the 3D poolings, which Grappler leaves
    assert details["flattens"] == 1  # the Gemm's weights reordered for the channels-last 2x2x2 map
    ops = serving_ops(read_meta_graph(served.folder / "3d"))
    assert transposes_inside(served.folder / "3d") == []
    assert ops["Transpose"] == 1
    # the stride-2 convolution pads 1 before, where SAME would pad 0: that Pad stays, the stride-1 one goes
    assert ops["Pad"] == 1 and ops["Conv3D"] == 2
    assert data_formats(served.folder / "3d", "Conv3D", "MaxPool3D", "AvgPool3D") == {"NDHWC"}


@pytest.mark.tf
def test_gpu_layout_stays_channels_first_without_transposes(served: Served) -> None:
    details = served.details["2d_gpu"]
    assert details["layout"] == "channels-first"
    ops = serving_ops(read_meta_graph(served.folder / "2d_gpu"))
    assert ops["Transpose"] == 0 and ops["Pad"] == 0
    assert ops["PadV2"] == 1  # a CPU runs channels-first max pooling with explicit padding not even with oneDNN
    assert data_formats(served.folder / "2d_gpu", "Conv2D", "DepthwiseConv2dNative", "MaxPool") == {"NCHW"}


@pytest.mark.tf
def test_model_without_convolutions_is_converted_as_before(served: Served) -> None:
    assert served.details["mlp"] == {"device": "CPU", "onnx_tf_device": "CPU", "rewritten": False,
                                     "why_not": "no convolution or pooling"}
    assert serving_ops(read_meta_graph(served.folder / "mlp_forced"))["Transpose"] == 1  # its own


def test_skip_reasons() -> None:
    from surgeon_plugins.converters.onnx_tf.layout import skip_reason

    assert skip_reason(cnn(2)) is None
    lstm = helper.make_graph(
        [helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=2)], "lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.zeros((1, 8, 2), np.float32), "w"),
         numpy_helper.from_array(np.zeros((1, 8, 2), np.float32), "r")])
    assert "LSTM" in skip_reason(helper.make_model(lstm))
    conv1d = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "conv1d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.zeros((4, 2, 3), np.float32), "w")])
    assert "1D" in skip_reason(helper.make_model(conv1d))


@pytest.mark.tf
def test_graph_with_variables_is_refused(tmp_path: Path) -> None:
    import tensorflow as tf

    from surgeon_plugins.converters.onnx_tf.layout import LayoutError, optimize_for_serving

    module = tf.Module()
    module.scale = tf.Variable(2.0)
    function = tf.function(lambda x: {"y": x * module.scale}, input_signature=[tf.TensorSpec([None], name="x")])
    tf.saved_model.save(module, str(tmp_path / "stateful"), signatures={"serving_default":
                                                                       function.get_concrete_function()})
    with pytest.raises(LayoutError, match="variables"):
        optimize_for_serving(tmp_path / "stateful", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.tf
def test_graph_with_loops_falls_back_to_onnx_tf_s_layout_and_still_serves(tmp_path: Path) -> None:
    """onnx-tf checks ScatterND's indices in a while loop, which Grappler lowers into frames the rewritten graph
    cannot run ("has inputs from different frames", as a padded, shifted Swin window mask did)."""
    import surgeon

    generator = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("ScatterND", ["c", "indices", "updates"], ["y"])]
    graph = helper.make_graph(nodes, "scatter", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [weight(generator, "w", 3, 2, 3, 3),
                               numpy_helper.from_array(np.array([[0, 1, 2]], np.int64), "indices"),
                               numpy_helper.from_array(np.full((1, 4), 7.0, np.float32), "updates")])
    path = tmp_path / "scatter.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    report = surgeon.run(path, tmp_path / "out")
    assert report["layout"]["rewritten"] is False
    assert report["layout"]["why_not"].startswith("the serving graph has ")
    assert "loops" in report["layout"]["why_not"]
    assert all(row["ok"] for row in report["parity"])


@pytest.mark.parametrize("size, kernel, stride, before, after, same", [
    (12, 3, 1, 1, 1, True), (None, 3, 1, 1, 1, True), (None, 3, 1, 0, 2, False), (None, 3, 2, 1, 1, False),
    (8, 3, 2, 1, 1, False), (7, 3, 2, 1, 1, True), (128, 7, 2, 3, 3, False), (9, 2, 2, 0, 1, True),
    (8, 2, 2, 0, 1, True), (8, 2, 2, 1, 0, False)])
def test_same_padding(size, kernel, stride, before, after, same) -> None:
    from surgeon_plugins.converters.onnx_tf.graph_rewrites import same_padding

    assert same_padding(size, kernel, stride, 1, before, after) is same
