"""The install recipe on Python 3.12 and 3.13, proved with pip's own resolver for those versions.

This machine has only Python 3.11, so pip resolves for the other versions with ``--python-version`` (wheels
only, as pip then requires) and installs nothing (``--dry-run``). pip evaluates environment markers with the
running interpreter even then, which is one reason the recipe has none: onnx-tf, whose declared
tensorflow-addons has no wheel for Python >= 3.12, is installed by a second command with ``--no-deps`` on every
Python. These tests need the package index, so the default run leaves them out; CI runs them with ``-m index``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.index
ROOT = Path(__file__).resolve().parents[1]


def pins(constraints: Path) -> dict[str, str]:
    """name -> version of each ``name==version`` line."""
    found = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            found[normalized(name)] = version
    return found


def normalized(name: str) -> str:
    return name.lower().replace("_", "-")


def resolve(tmp_path: Path, python: str, *requirements: str, no_deps: bool = False) -> dict[str, str]:
    """What ``pip install`` would install for ``python``: name -> version."""
    report = tmp_path / f"report-{python}.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--target", str(tmp_path / "never-written"), "--python-version", python, "--only-binary=:all:",
               "--report", str(report), *(["--no-deps"] if no_deps else []), *requirements]
    finished = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert not (tmp_path / "never-written").exists()
    return {normalized(item["metadata"]["name"]): item["metadata"]["version"]
            for item in json.loads(report.read_text())["install"]}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """surgeon as a wheel (pip resolves for another Python from wheels only)."""
    folder = tmp_path_factory.mktemp("wheel")
    finished = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(folder),
                               str(ROOT)], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return next(folder.glob("surgeon-*.whl"))


@pytest.mark.parametrize("python", ["3.12", "3.13"])
def test_the_documented_install_resolves_on(python, wheel, tmp_path):
    pinned = pins(ROOT / "constraints.txt")
    installed = resolve(tmp_path, python, "-c", str(ROOT / "constraints.txt"), f"{wheel}[test]")
    assert installed["surgeon"]
    for name in ("tensorflow", "keras", "onnx", "onnxruntime", "numpy", "protobuf", "torch", "onnxscript"):
        assert installed[name].split("+")[0] == pinned[name], name
    assert "tensorflow-addons" not in installed and "tensorflow-probability" not in installed

    second = resolve(tmp_path, python, f"onnx-tf=={pinned['onnx-tf']}", no_deps=True)
    assert second == {"onnx-tf": pinned["onnx-tf"]}


def test_onnx_tf_with_its_own_dependencies_does_not_resolve_on_python_3_12(tmp_path):
    """Why the recipe installs onnx-tf apart: without --no-deps pip needs tensorflow-addons, which has no 3.12 wheel."""
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--target", str(tmp_path / "never-written"), "--python-version", "3.12", "--only-binary=:all:",
               "onnx-tf==1.10.0"]
    finished = subprocess.run(command, capture_output=True, text=True)
    assert finished.returncode != 0
    assert "tensorflow-addons" in finished.stderr.lower() or "tensorflow_addons" in finished.stderr.lower()
