"""The software stack that made a model: installed versions, read from package metadata.

Nothing here imports TensorFlow, PyTorch or onnx: ``surgeon inspect`` uses it
too. A run records the versions in ``report.json`` ("stack") and in the
SavedModel itself, as ``assets.extra/surgeon.json``: TensorFlow, TF Serving
and Triton ignore ``assets.extra`` when they load a model, and a folder
copied away from its report still says what made it.
"""

from __future__ import annotations

import json
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from surgeon.version import __version__

# key in the record -> the distributions that install it, the first one found wins
PACKAGES: dict[str, tuple[str, ...]] = {
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-macos", "tensorflow-intel",
                   "tensorflow-aarch64", "tf-nightly", "tf-nightly-cpu"),
    "onnx-tf": ("onnx-tf",),
    "onnx": ("onnx",),
    "torch": ("torch",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "ort-nightly"),
    "numpy": ("numpy",),
}
DISPLAY_NAMES = {"tensorflow": "TensorFlow", "python": "Python"}
RECORD = Path("assets.extra") / "surgeon.json"  # inside a SavedModel folder


def installed_versions() -> dict[str, str | None]:
    """Versions of the packages that make a SavedModel, plus Python and surgeon; None: not installed."""
    versions: dict[str, str | None] = {name: _first_installed(distributions)
                                       for name, distributions in PACKAGES.items()}
    versions["python"] = platform.python_version()
    versions["surgeon"] = __version__
    return versions


def _first_installed(distributions: tuple[str, ...]) -> str | None:
    for distribution in distributions:
        try:
            version = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
        except Exception:  # unreadable metadata of a half-removed package: as good as absent
            continue
        if version:
            return version
    return None


def write_record(saved_model: Path, stack: dict[str, Any]) -> Path:
    """Write ``stack`` into the SavedModel folder ``saved_model`` as ``assets.extra/surgeon.json``."""
    path = Path(saved_model) / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"made_by": "surgeon", "stack": stack}, indent=2) + "\n")
    return path


def read_record(saved_model: Path) -> dict[str, Any] | None:
    """The stack recorded in the SavedModel folder ``saved_model``; None when there is no record.

    Raises ValueError when the file is there but unreadable.
    """
    path = Path(saved_model) / RECORD
    if not path.is_file():
        return None
    try:
        stack = json.loads(path.read_text())["stack"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{RECORD} is unreadable ({type(error).__name__}: {error})") from None
    if not isinstance(stack, dict):
        raise ValueError(f"{RECORD} is unreadable (its 'stack' is not an object)")
    return {str(name): None if version is None else str(version) for name, version in stack.items()}


def minor_version(version: str | None) -> str | None:
    """``"2.21.0"`` -> ``"2.21"`` (also for ``2.22.0-dev20260101`` and ``2.15.1+cuda``); None if unparsable."""
    match = re.match(r"(\d+)\.(\d+)", version or "")
    return f"{match[1]}.{match[2]}" if match else None


def format_stack(stack: dict[str, str | None]) -> str:
    """``TensorFlow 2.21.0, onnx-tf 1.10.0, ...``; packages that were not installed are named as such."""
    return ", ".join(f"{DISPLAY_NAMES.get(name, name)} {version or 'not installed'}" for name, version in stack.items())


def serve_with(tensorflow_version: str | None) -> str | None:
    """What can serve a SavedModel written by ``tensorflow_version``: the same TensorFlow or newer."""
    minor = minor_version(tensorflow_version)
    if minor is None:
        return None
    return f"TensorFlow >= {minor} (TF Serving {minor} or newer)"
