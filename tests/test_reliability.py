"""Attacks on the tool: hostile files, failing disks, interrupted runs."""

import resource
import signal
import subprocess
import sys
import time

import onnx
import pytest
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


# a model big enough that converting it takes a moment and its files outgrow a small size limit
WIDE = """
<ir_version: 8, opset_import: ["" : 13]>
wide (float[N, 512] x) => (float[N, 512] y)
<float[512, 512] w = {WEIGHTS}>
{ h = MatMul(x, w)  y = Relu(h) }
"""


@pytest.fixture
def wide_path(tmp_path):
    weights = ", ".join(["0.001"] * 512 * 512)
    path = tmp_path / "wide.onnx"
    onnx.save(model_from_text(WIDE.replace("WEIGHTS", weights)), str(path))
    return path


def start_run(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "surgeon", "run", *map(str, args)], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, **kwargs)


def wait_for_line(process, text, timeout=120):
    """Read stderr until a line holds ``text``; return what was read."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"never saw {text!r}: {''.join(seen)}")


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_run_stopped_during_conversion_leaves_no_output(wide_path, tmp_path, how):
    out = tmp_path / "out"
    process = start_run(wide_path, "-o", out)
    wait_for_line(process, "converting to TensorFlow")
    process.send_signal(how)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert not out.exists()
    if how != signal.SIGKILL:
        assert "interrupted; nothing was written" in stderr and "Traceback" not in stderr
        assert not list(tmp_path.glob(".out.*"))


def test_a_killed_run_leaves_the_previous_output_as_it_was_and_its_leftovers_are_swept(wide_path, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    previous = {"report.json": '{"surgeon": "0.1.0"}', "keep.txt": "previous run"}
    for name, text in previous.items():
        (out / name).write_text(text)
    process = start_run(wide_path, "-o", out, "--force")
    wait_for_line(process, "converting to TensorFlow")
    process.kill()
    process.communicate(timeout=120)
    assert {p.name: p.read_text() for p in out.iterdir()} == previous
    (leftover,) = tmp_path.glob(".out.*.partial")
    result = subprocess.run([sys.executable, "-m", "surgeon", "run", str(wide_path), "-o", str(out), "--force",
                             "--format", "onnx"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not leftover.exists()
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "report.json"]


def limit_file_size(limit):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.parametrize("formats", ["onnx", "saved_model"])
def test_a_full_disk_gives_one_clean_error_and_no_output(wide_path, tmp_path, formats):
    out = tmp_path / "out"
    size = wide_path.stat().st_size
    process = start_run(wide_path, "-o", out, "--format", formats, preexec_fn=limit_file_size(size // 2))
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr
    (error,) = [line for line in stderr.splitlines() if line.startswith("surgeon: error: ")]
    assert "failed: File too large" in error and "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize("attribute", ["strides", "kernel_shape"])
def test_a_zero_that_would_crash_onnx_shape_inference_is_refused(tmp_path, cli, attribute):
    """Found by fuzzing: onnx 1.18's shape inference dies of SIGFPE on a pooling stride of 0."""
    from surgeon.fuzzing import small_cnn

    model = small_cnn()
    pool = next(node for node in model.graph.node if node.op_type == "AveragePool")
    next(a for a in pool.attribute if a.name == attribute).ints[0] = 0
    path = tmp_path / "zero.onnx"
    onnx.save(model, str(path))
    for args in (["inspect", path], ["run", path, "-o", tmp_path / "out"]):
        result = cli(*args)
        assert result.returncode == 1, result.stderr
        assert f"invalid ONNX model (node 'AveragePool': {attribute} must be positive, got [0, 2])" in result.stderr


def test_a_pass_that_leaves_a_zero_stride_is_named_not_fatal(tmp_path, write_plugin):
    import surgeon
    from surgeon.fuzzing import small_cnn

    plugin = write_plugin("zero", """
        from surgeon import RewritePass, hookimpl

        def zero_stride(graph, options):
            next(node for node in graph.nodes if node.op == "AveragePool").attrs["strides"] = [0, 2]

        @hookimpl
        def surgeon_passes():
            return [RewritePass(name="zero_stride", doc="Breaks a pooling.", run=zero_stride)]
    """)
    path = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(), str(path))
    with pytest.raises(surgeon.PluginError, match="plugin 'zero_stride': left a graph that fails the ONNX checks: "
                                                  "node .*strides must be positive"):
        surgeon.run(path, tmp_path / "out", plugins=["zero_stride"], plugin_paths=[plugin], formats=["onnx"])


def test_a_name_that_is_not_utf8_gets_one_message(tmp_path, cli):
    """Found by fuzzing: protobuf decodes strings late, so a bad dim name crashed a detector."""
    from surgeon.fuzzing import small_cnn

    data = small_cnn().SerializeToString()
    assert data.count(b"\x12\x01N") == 2  # dim_param "N" of the input and the output
    path = tmp_path / "latin1.onnx"
    path.write_bytes(data.replace(b"\x12\x01N", b"\x12\x01\xc1"))
    for args in (["inspect", path], ["run", path, "-o", tmp_path / "out"]):
        result = cli(*args)
        assert result.returncode == 1
        assert f"surgeon: error: {path}: not an ONNX model (a name in it is not valid UTF-8)" in result.stderr
