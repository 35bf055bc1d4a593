"""`surgeon new-plugin` writes a package that installs, passes its own tests and is used by `surgeon run`."""

import json
import os
import subprocess
import sys

import onnx
import pytest

from surgeon.testing import model_from_text

MODEL = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 4] x) => (float[N, 4] y) <float half = {0.5}, float one = {1.0}>
{
    a = Div(x, half)
    b = Relu(a)
    c = Div(b, one)
    y = Add(c, a)
}
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The generated package, installed with pip (entry point included) into its own site folder."""
    parent = tmp_path_factory.mktemp("plugins")
    created = subprocess.run([sys.executable, "-m", "surgeon", "new-plugin", "fold_demo", "--dir", str(parent)],
                             capture_output=True, text=True)
    assert created.returncode == 0, created.stderr
    package = parent / "surgeon-fold-demo"
    site = parent / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--target", str(site), str(package)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    return package, {**os.environ, "PYTHONPATH": str(site)}


def test_generated_package_passes_its_own_tests(installed):
    package, env = installed
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package / "tests")],
                            capture_output=True, text=True, env=env, cwd=package)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_installed_plugin_is_listed_and_used_by_surgeon_run(installed, tmp_path, cli):
    _, env = installed
    listing = json.loads(cli("plugins", "--json", env=env).stdout)
    (plugin,) = [p for p in listing if p["name"] == "fold_demo"]
    assert plugin["origin"] == "entry point 'fold_demo' (surgeon_fold_demo)"
    source = tmp_path / "model.onnx"
    onnx.save(model_from_text(MODEL), str(source))
    inspected = json.loads(cli("inspect", source, "--json", env=env).stdout)
    assert [f["where"] for f in inspected["findings"] if f["plugin"] == "fold_demo"] == [
        "the Div node making 'a'", "the Div node making 'c'"]
    result = cli("run", source, "-o", tmp_path / "out", "--plugins", "fold_demo", "--format", "onnx", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (record,) = report["plugins"]
    assert record["name"] == "fold_demo" and (record["nodes_added"], record["nodes_removed"]) == (1, 2)
    assert all(row["ok"] for row in report["parity"])


@pytest.mark.parametrize(("name", "message"), [("Bad-Name", "use lowercase letters"),
                                               ("rename_outputs", "already installed")])
def test_bad_names_are_refused(tmp_path, cli, name, message):
    result = cli("new-plugin", name, "--dir", tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert list(tmp_path.iterdir()) == []
