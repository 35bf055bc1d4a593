"""The command line, run as users run it: in a fresh process."""

import json
import subprocess
import sys
import textwrap

import pytest

NO_HEAVY_IMPORTS = """
import sys
from surgeon.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = sorted(m for m in ("tensorflow", "torch", "onnx_tf") if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
raise SystemExit(code)
"""


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["plugins"], ["inspect", "{model}"]])
def test_help_plugins_and_inspect_do_not_import_tensorflow_or_torch(args, tiny_path):
    argv = [arg.format(model=tiny_path) for arg in args]
    result = subprocess.run([sys.executable, "-c", NO_HEAVY_IMPORTS, *argv], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "HEAVY:\n" in result.stdout


def test_run_on_an_onnx_file(tiny_path, tmp_path, cli):
    out = tmp_path / "out"
    result = cli("run", tiny_path, "-o", out, "--plugins", "rename_outputs", "--set", "rename_outputs.names=x:images",
                 "--format", "onnx", "--batch-sizes", "1,2")
    assert result.returncode == 0, result.stderr
    assert f"wrote {out} (model.onnx, report.json)" in result.stdout
    assert "rename_outputs   x -> images, add_17 -> output_0" in result.stderr
    report = json.loads((out / "report.json").read_text())
    assert [row["batch"] for row in report["parity"]] == [1, 2, 2]


def test_pipeline_file_with_flags_overriding_it(tiny_path, tmp_path, cli):
    recipe = tmp_path / "pipeline.toml"
    recipe.write_text(textwrap.dedent(f"""
        source = "{tiny_path.name}"
        output = "served"
        plugins = ["rename_outputs"]
        format = ["onnx"]
        batch_sizes = [2]

        [rename_outputs]
        names = {{ add_17 = "result" }}
    """))
    result = cli("run", "--config", recipe, "--set", "rename_outputs.input_prefix=pixels", cwd=tmp_path.parent)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "served" / "report.json").read_text())
    assert report["plugins"][0]["renamed"] == {"add_17": "result"}
    assert report["plugins"][0]["options"]["input_prefix"] == "pixels"
    assert {row["batch"] for row in report["parity"]} == {2}


@pytest.mark.parametrize(("content", "message"), [
    ("plugins = 'rename_outputs'\n", "plugins = 'rename_outputs' has the wrong type"),
    ("plugin = ['x']\n", "unknown setting 'plugin'"),
    ("plugins = [\n", "invalid TOML"),
])
def test_bad_pipeline_files(tmp_path, cli, content, message, tiny_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(content)
    result = cli("run", tiny_path, "-o", tmp_path / "out", "--config", recipe)
    assert result.returncode == 2
    assert f"surgeon: error: pipeline file {recipe}: " in result.stderr and message in result.stderr


@pytest.mark.parametrize(("content", "message"), [
    (b"", "the file is empty, not an ONNX model"),
    (b"\x00\xff\x13garbage" * 50, "not an ONNX model"),
    (b"hello, I am text\n", "ONNX model"),
    ("truncated", "not an ONNX model"),
])
def test_bad_model_files_get_one_clear_message(tmp_path, cli, content, message):
    bad = tmp_path / "bad.onnx"
    if content == "truncated":
        from surgeon.fuzzing import small_cnn

        whole = small_cnn().SerializeToString()
        content = whole[: len(whole) // 2]
    bad.write_bytes(content)
    for args in (["inspect", bad], ["run", bad, "-o", tmp_path / "out", "--format", "onnx"]):
        result = cli(*args)
        assert result.returncode == 1
        last_line = result.stderr.strip().splitlines()[-1]
        assert last_line.startswith(f"surgeon: error: {bad}: ") and message in last_line
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--plugins", "nope"], "unknown rewrite plugin 'nope'"),
    (["--set", "rename_outputs.auto=perhaps", "--format", "onnx"], "option rename_outputs.auto: not a boolean"),
    (["--set", "oops"], "expected PLUGIN.KEY=VALUE"),
    (["--batch-sizes", "0,x"], "--batch-sizes '0,x': expected positive whole numbers"),
    (["--format", "tflite"], "unknown format 'tflite'"),
    (["--device", "gpu"], "--device 'gpu': expected 'cpu' or a GPU index"),
])
def test_bad_flags_get_one_clear_message(tiny_path, tmp_path, cli, args, message):
    result = cli("run", tiny_path, "-o", tmp_path / "out", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path, cli):
    result = cli("inspect", tmp_path / "missing.onnx", "--debug")
    assert result.returncode == 1 and "Traceback" in result.stderr and "no such file" in result.stderr


def test_inspect_lists_io_ops_and_hazards_with_the_fixing_plugin(tiny_path, cli):
    result = cli("inspect", tiny_path)
    assert result.returncode == 0, result.stderr
    assert "  x  float  ['N', 4]" in result.stdout
    assert "ops (3 nodes): Relu 1, MatMul 1, Add 1" in result.stdout
    assert "[rename_outputs] output 'add_17': generated or invalid name" in result.stdout
    info = json.loads(cli("inspect", tiny_path, "--json").stdout)
    assert info["outputs"] == [{"name": "add_17", "dtype": "float", "shape": ["N", 3]}]
    assert {"plugin": "rename_outputs", "where": "output 'add_17'", "nodes": [], "fixable": True,
            "message": "generated or invalid name; would be renamed to 'output_0'"} in info["findings"]
