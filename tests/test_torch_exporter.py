"""The torch source: factories, checkpoints, shapes, names, opsets, and the PyTorch model as the reference."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import surgeon
from surgeon import SurgeonError, UsageError
from surgeon import options as option_parsing
from surgeon.testing import run_onnx
from surgeon_plugins.sources.torch import DEFAULT_OPSET, InputSpec, TorchOptions, accepts, parse_input_shape

MODELS = '''
import torch
from torch import nn
import torch.nn.functional as F

from neighbour import CHANNELS


class Classifier(nn.Module):
    """Max pooling, squeeze-excitation written with unsqueeze, and the recipe's x.view(x.size(0), -1)."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, CHANNELS, 3, padding=1)
        self.bn = nn.BatchNorm2d(CHANNELS)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.squeeze = nn.Linear(CHANNELS, 2)
        self.excite = nn.Linear(2, CHANNELS)
        self.fc = nn.Linear(CHANNELS * 4 * 4, num_classes)

    def forward(self, x):
        x = self.pool(F.relu(self.bn(self.conv(x))))
        weights = torch.sigmoid(self.excite(F.relu(self.squeeze(x.mean([2, 3])))))
        x = x * weights.unsqueeze(-1).unsqueeze(-1)
        return self.fc(x.view(x.size(0), -1))


class TwoInputs(nn.Module):
    """An image and token ids in; logits and a pooled embedding out."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.embed = nn.Embedding(10, 4)
        self.fc = nn.Linear(8, 2)

    def forward(self, image, tokens):
        pooled = self.embed(tokens).mean(1)
        return self.fc(torch.cat([self.conv(image).mean([2, 3]), pooled], 1)), pooled


class LastPosition(nn.Module):
    """Each sample's last position picked through the flattened batch, rows computed from the batch size: tracing
    folds them into one constant row list, which no rewrite of a batch-1 export can tell from fixed rows."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3)

    def forward(self, x):
        n, steps, depth = x.shape
        rows = torch.arange(n) * steps + (steps - 1)
        return self.proj(x.reshape(n * steps, depth)[rows])


def build(num_classes=3):
    torch.manual_seed(7)
    return Classifier(num_classes)


def last_position():
    torch.manual_seed(5)
    return LastPosition()


def two_inputs():
    torch.manual_seed(3)
    return TwoInputs()


def not_a_model():
    return 3
'''


@pytest.fixture
def models(tmp_path: Path) -> Path:
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "neighbour.py").write_text("CHANNELS = 4\n")
    path = folder / "models.py"
    path.write_text(textwrap.dedent(MODELS))
    return path


def import_models(path: Path):
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location("models_under_test", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def all_ok(report: dict) -> bool:
    return bool(report["parity"]) and all(row["ok"] for row in report["parity"])


@pytest.mark.parametrize("spec, accepted", [
    ("model.py:build", True), ("dir/model.py", True), ("/abs/dir/model.py:Net.create", True),
    ("torch.nn:Linear", True), ("pkg.sub.mod:factory", True), ("example:ct-position", True),
    ("example:unknown", True), ("model.onnx", False), ("model.pth", False), ("pkg.mod", False),
    ("http://host/x", False), ("model", False),
])
def test_accepts(spec: str, accepted: bool) -> None:
    assert accepts(spec) is accepted


@pytest.mark.parametrize("text, expected", [
    ("1,3,224,224", InputSpec((1, 3, 224, 224))),
    ("1x3x224x224", InputSpec((1, 3, 224, 224))),
    (" 2, 4 ", InputSpec((2, 4))),
    ("int64:1,16", InputSpec((1, 16), "int64")),
    ("float16:1x8", InputSpec((1, 8), "float16")),
    ("bool:4", InputSpec((4,), "bool")),
])
def test_parse_input_shape(text: str, expected: InputSpec) -> None:
    assert parse_input_shape(text) == expected


@pytest.mark.parametrize("text, message", [
    ("1,a,3", "expected positive sizes"), ("1,0,3", "expected positive sizes"), ("", "expected positive sizes"),
    ("int65:1,3", "unknown dtype 'int65'"),
])
def test_bad_input_shapes_name_the_option(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=f"options of plugin 'torch': input shape {text!r}: {message}"):
        option_parsing.build("torch", TorchOptions, {"input_shapes": [text]})


def test_options_from_set_strings() -> None:
    built = option_parsing.build("torch", TorchOptions, {
        "input_shapes": "1x3x8x8,int64:1x5", "kwargs": '{"num_classes": 6, "name": "ct"}', "opset": "11",
        "dynamic_batch_export": "true", "weights": "none", "input_names": "image,tokens",
    })
    assert built.inputs() == [InputSpec((1, 3, 8, 8)), InputSpec((1, 5), "int64")]
    assert built.kwargs == {"num_classes": 6, "name": "ct"}
    assert (built.opset, built.dynamic_batch_export, built.weights) == (11, True, None)
    assert built.input_names == ["image", "tokens"]
    assert TorchOptions().opset is None  # chosen per run: see test_the_default_opset_follows_opset_compat


@pytest.mark.parametrize(("plugins", "opset"), [([], DEFAULT_OPSET), (["opset_compat"], 17)])
def test_the_default_opset_follows_opset_compat(tmp_path: Path, plugins: list[str], opset: int) -> None:
    report = surgeon.run("torch.nn:Linear", tmp_path / "out", plugins=plugins, formats=["onnx"], verify=False,
                         options={"torch": {"input_shapes": ["2,4"], "kwargs": {"in_features": 4, "out_features": 3}}})
    assert report["export"]["opset"] == opset


def test_a_pass_reaching_newer_opsets_raises_the_default_opset(write_plugin, tmp_path: Path) -> None:
    """The source asks the run how far its passes reach, not whether one is called opset_compat."""
    plugin = write_plugin("reach", """
        from surgeon import RewritePass, hookimpl

        @hookimpl
        def surgeon_passes():
            return [RewritePass(name="reach_15", doc="takes opsets up to 15", run=lambda graph, options: None,
                                newest_opset=15)]
    """)
    report = surgeon.run("torch.nn:Linear", tmp_path / "out", plugins=["reach_15"], formats=["onnx"], verify=False,
                         plugin_paths=[plugin],
                         options={"torch": {"input_shapes": ["2,4"], "kwargs": {"in_features": 4, "out_features": 3}}})
    assert report["export"]["opset"] == 15


def test_a_batch_dynamic_batch_refuses_is_exported_dynamic_instead(models: Path, tmp_path: Path, caplog) -> None:
    caplog.set_level("WARNING", logger="surgeon")
    report = surgeon.run(f"{models}:last_position", tmp_path / "out", plugins=["dynamic_batch", "pool_fix"],
                         formats=["onnx"], batch_sizes=[1, 3, 8], options={"torch": {"input_shapes": ["1,5,4"]}})
    assert report["dynamic_batch_fallback"]["refused_by"] == "dynamic_batch"
    assert "picks samples along the batch axis" in report["dynamic_batch_fallback"]["reason"]
    assert report["export"]["dynamic_batch"] is True
    assert [record["name"] for record in report["plugins"]] == ["pool_fix"]
    assert all_ok(report) and {row["batch"] for row in report["parity"]} == {1, 3, 8}
    assert "exporting again with a dynamic batch axis, without dynamic_batch" in caplog.text


def test_an_onnx_file_whose_batch_dynamic_batch_refuses_is_still_refused(models: Path, tmp_path: Path) -> None:
    """Only a source that can export again offers the dynamic export; a file stays as it is."""
    surgeon.run(f"{models}:last_position", tmp_path / "export", formats=["onnx"], verify=False,
                options={"torch": {"input_shapes": ["1,5,4"]}})
    with pytest.raises(SurgeonError, match="picks samples along the batch axis"):
        surgeon.run(tmp_path / "export" / "model.onnx", tmp_path / "out", plugins=["dynamic_batch"],
                    formats=["onnx"], verify=False)
    assert not (tmp_path / "out").exists()


def test_file_factory_with_checkpoint_and_renamed_io(models: Path, tmp_path: Path) -> None:
    """Weights from a DataParallel training checkpoint; parity holds after inputs and outputs are renamed."""
    trained = import_models(models).build(num_classes=4)
    torch.manual_seed(11)
    for parameter in trained.parameters():
        parameter.data.normal_()
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"epoch": 9, "arch": "classifier", "state_dict": torch.nn.DataParallel(trained).state_dict(),
                "optimizer": {}}, checkpoint)
    report = surgeon.run(
        f"{models}:build", tmp_path / "out", plugins=["rename_outputs"], formats=["onnx"],
        options={"torch": {"weights": str(checkpoint), "input_shapes": ["1,3,8,8"], "kwargs": {"num_classes": 4}},
                 "rename_outputs": {"names": {"x": "images", "output": "result"}}},
    )
    assert all_ok(report)
    assert report["export"]["inputs"] == [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}]
    assert (report["export"]["opset"], report["export"]["weights"]) == (DEFAULT_OPSET, str(checkpoint))
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["result"]
    image = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = trained.eval()(torch.from_numpy(image)).numpy()
    np.testing.assert_allclose(run_onnx(model, [image])[0], expected, rtol=1e-4, atol=1e-5)


def test_two_input_model_with_dynamic_batch_export(models: Path, tmp_path: Path) -> None:
    report = surgeon.run(
        f"{models}:two_inputs", tmp_path / "out", formats=["onnx"], batch_sizes=[1, 3],
        options={"torch": {"input_shapes": ["1,3,8,8", "int64:1,5"], "output_names": ["logits", "pooled"],
                           "dynamic_batch_export": True}},
    )
    assert all_ok(report)
    assert {row["batch"] for row in report["parity"]} == {1, 3}
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(inputs) == ["image", "tokens"]
    assert inputs["image"].elem_type == onnx.TensorProto.FLOAT
    assert inputs["tokens"].elem_type == onnx.TensorProto.INT64
    assert [d.dim_param or d.dim_value for d in inputs["tokens"].shape.dim] == ["batch", 5]
    assert [o.name for o in model.graph.output] == ["logits", "pooled"]
    module = import_models(models).two_inputs().eval()
    image = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    tokens = np.array([[1, 2, 3, 4, 5], [0, 0, 9, 9, 1], [7, 7, 7, 7, 7]], dtype=np.int64)
    with torch.no_grad():
        expected = [t.numpy() for t in module(torch.from_numpy(image), torch.from_numpy(tokens))]
    for got, want in zip(run_onnx(model, [image, tokens]), expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_package_module_factory_from_the_command_line(cli, tmp_path: Path) -> None:
    result = cli("run", "torch.nn:Linear", "--input-shape", "2,4", "--set", 'torch.kwargs={"in_features": 4, '
                 '"out_features": 3}', "--format", "onnx", "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and "warn" not in result.stderr.lower()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["source_plugin"] == "torch" and all_ok(report)
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["input"]  # Linear.forward(self, input)
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [2, 3]


@pytest.mark.parametrize("spec, options, message", [
    ("{dir}/missing.py:build", {}, "missing.py: no such file"),
    ("{models}", {}, r"name a factory in .*models.py as .*models.py:NAME \(callables defined there: "
                     r"Classifier, TwoInputs, LastPosition, build, last_position, two_inputs, not_a_model\)"),
    ("{models}:nothing", {}, "name a factory in"),
    ("no_such_package.models:build", {}, "cannot import no_such_package.models"),
    ("{models}:build", {"kwargs": {"colour": 1}}, r"the factory failed with kwargs \{'colour': 1\} \(TypeError"),
    ("{models}:not_a_model", {}, "the factory returned a int, not a torch.nn.Module"),
    ("{models}:build", {"input_shapes": ["1,2,8,8"]}, r"the model fails on inputs float32\[1,2,8,8\]"),
    ("{models}:build", {"input_shapes": []}, "a PyTorch model needs its input shapes"),
    ("{models}:build", {"input_names": ["a", "b"]}, r"option torch.input_names: 2 names given for 1 inputs"),
    ("{models}:build", {"output_names": ["a", "b"]}, r"option torch.output_names: 2 names given for 1 outputs"),
    ("{models}:build", {"weights": "{dir}/none.pth"}, "checkpoint .*none.pth: no such file"),
    ("example:ct-scan", {}, "unknown example 'ct-scan'; bundled: ct-position"),
])
@pytest.mark.tf
def test_errors_name_what_is_wrong(models: Path, tmp_path: Path, spec: str, options: dict, message: str) -> None:
    values = {"input_shapes": ["1,3,8,8"], **options}
    values = {key: value.format(dir=tmp_path) if isinstance(value, str) else value for key, value in values.items()}
    with pytest.raises(SurgeonError, match=message):
        surgeon.run(spec.format(dir=tmp_path, models=models), tmp_path / "out", formats=["onnx"],
                    options={"torch": values})
    assert not (tmp_path / "out").exists()


@pytest.mark.tf
def test_default_opset_converts_with_onnx_tf(models: Path, tmp_path: Path) -> None:
    """Unsqueeze, max pooling and x.view(x.size(0), -1) convert at the default opset, batch fixed or dynamic.

    At opset 13 onnx-tf 1.10 has no Unsqueeze handler: that is why the default is 12.
    """
    from surgeon_plugins.converters.onnx_tf.compat import imported_onnx_tf

    prepare = imported_onnx_tf().prepare
    module = import_models(models).build().eval()
    for dynamic in (False, True):
        out = tmp_path / f"out_{dynamic}"
        surgeon.run(f"{models}:build", out, formats=["onnx"], verify=False,
                    options={"torch": {"input_shapes": ["1,3,8,8"], "dynamic_batch_export": dynamic}})
        converted = prepare(onnx.load(str(out / "model.onnx")))
        for size in (1, 3) if dynamic else (1,):
            image = np.random.default_rng(size).standard_normal((size, 3, 8, 8)).astype(np.float32)
            with torch.no_grad():
                expected = module(torch.from_numpy(image)).numpy()
            np.testing.assert_allclose(np.asarray(converted.run({"x": image})[0]), expected, rtol=1e-3, atol=1e-4)
    surgeon.run(f"{models}:build", tmp_path / "opset13", formats=["onnx"], verify=False,
                options={"torch": {"input_shapes": ["1,3,8,8"], "opset": 13}})
    with pytest.raises(Exception, match="Unsqueeze version 13 is not implemented"):
        prepare(onnx.load(str(tmp_path / "opset13" / "model.onnx"))).run({"x": image[:1]})


@pytest.mark.tf
def test_saved_model_matches_pytorch_at_several_batch_sizes(models: Path, tmp_path: Path) -> None:
    """End to end: export with a dynamic batch, convert, and check the SavedModel in a fresh process."""
    report = surgeon.run(f"{models}:build", tmp_path / "out", batch_sizes=[1, 3],
                         options={"torch": {"input_shapes": ["1,3,8,8"], "dynamic_batch_export": True}})
    stages = {(row["stage"], row["batch"]) for row in report["parity"]}
    assert {("saved_model", 1), ("saved_model", 3)} <= stages
    assert all_ok(report)
    assert (tmp_path / "out" / "saved_model" / "saved_model.pb").is_file()


@pytest.mark.tf
def test_dynamo_export_serves_like_pytorch_at_several_batch_sizes(dynamo_exporter, cli, models: Path,
                                                                   tmp_path: Path) -> None:
    """Exported at batch 1 by dynamo at opset 18 in the surgeon process, then made dynamic, fitted to onnx-tf,
    converted and served (the SavedModel checked in a fresh process); torch.onnx's log stays off the terminal."""
    out = tmp_path / "out"
    result = cli("run", f"{models}:build", "--input-shape", "1,3,8,8", "--set", "torch.dynamo=true",
                 "--plugins", "dynamic_batch,pool_fix,opset_compat", "--batch-sizes", "1,3", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "[torch.onnx]" not in result.stdout + result.stderr and "torchvision" not in result.stderr
    report = json.loads((out / "report.json").read_text())
    assert (report["export"]["exporter"], report["export"]["opset"]) == ("dynamo", 18)
    assert all_ok(report)
    assert {(row["stage"], row["batch"]) for row in report["parity"]} >= {("saved_model", 1), ("saved_model", 3)}
    model = onnx.load(str(out / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["x"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param


# the TensorFlow 2.15 stack, simulated: None in sys.modules makes importlib.util.find_spec report the module
# missing and any import of it fail, as when it is not installed
WITHOUT_ONNXSCRIPT = "import sys; sys.modules['onnxscript'] = None; from surgeon.cli import main; sys.exit(main())"


def test_dynamo_without_onnxscript_says_what_to_install(models: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_ONNXSCRIPT, "run", f"{models}:build", "--input-shape", "1,3,8,8",
         "--set", "torch.dynamo=true", "--plugins", "opset_compat", "-o", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("surgeon: error:")]
    assert re.fullmatch(r"surgeon: error: option torch\.dynamo: the dynamo exporter needs onnxscript and onnx-ir "
                        r"\(onnxscript( and onnx-ir)? not installed\)", error), error
    assert ("hint: pip install 'surgeon[dynamo]'; they need ml-dtypes >= 0.5 and so TensorFlow >= 2.16"
            in result.stderr)
    assert not (tmp_path / "out").exists()


@pytest.mark.tf
def test_dynamo_two_inputs_with_a_dynamic_batch_axis(dynamo_exporter, models: Path, tmp_path: Path, caplog) -> None:
    """No opset_compat: torch cannot bring its opset 18 down to the default, and the log says what to add."""
    with caplog.at_level("WARNING", logger="surgeon"):
        report = surgeon.run(
            f"{models}:two_inputs", tmp_path / "out", formats=["onnx"], batch_sizes=[1, 3],
            options={"torch": {"input_shapes": ["1,3,8,8", "int64:1,5"], "output_names": ["logits", "pooled"],
                               "dynamic_batch_export": True, "dynamo": True}})
    assert all_ok(report)
    assert report["export"]["opset"] == 18
    assert f"wrote opset 18, not the {DEFAULT_OPSET} asked for; a pass that lowers opsets (opset_compat) brings" in caplog.text
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["image", "tokens"]
    assert [o.name for o in model.graph.output] == ["logits", "pooled"]
    for value in [*model.graph.input, *model.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch", value.name


DATA_DEPENDENT = """
import torch


class Branchy(torch.nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x - 1


def build():
    return Branchy()
"""


def test_what_torch_export_cannot_capture_is_explained(dynamo_exporter, tmp_path: Path) -> None:
    path = tmp_path / "branchy.py"
    path.write_text(DATA_DEPENDENT)
    with pytest.raises(SurgeonError, match="torch.export cannot capture the model") as caught:
        surgeon.run(f"{path}:build", tmp_path / "out", formats=["onnx"],
                    options={"torch": {"input_shapes": ["2,3"], "dynamo": True}})
    assert "TorchScript exporter" in caught.value.hint
    assert not (tmp_path / "out").exists()


def test_accepting_and_listing_do_not_import_torch() -> None:
    code = textwrap.dedent("""
        import sys
        from surgeon_plugins import examples
        from surgeon_plugins.sources import torch as torch_source
        from surgeon_plugins.sources.torch import checkpoints  # noqa: F401 (imported, not used: it must not pull torch)
        [source] = torch_source.surgeon_sources()
        assert source.accepts("example:ct-position") and source.accepts("net.py:build")
        assert examples.get("ct-position").full_input_shape == (1, 1, 128, 128, 128)
        print(sorted(name for name in ("torch", "tensorflow") if name in sys.modules))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
