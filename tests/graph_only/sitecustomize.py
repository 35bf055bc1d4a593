"""Imported at start-up by every Python process of a ``pytest --graph-only`` run (this folder is put first on
PYTHONPATH), and by the test process itself: TensorFlow cannot be imported, so a test that needs it, in its own
process or in one it starts (the command line, a fresh serving process), fails unless it is marked ``tf``.
Finding a package without importing it still works (surgeon reads onnx-tf's operator table as text)."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys

TENSORFLOW_PACKAGES = ("tensorflow", "tf_keras", "keras")


class NoTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(name, self) if name.split(".")[0] in TENSORFLOW_PACKAGES else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        raise ImportError(f"{spec.name} imported under --graph-only: mark the test @pytest.mark.tf")

    def exec_module(self, module: object) -> None:
        """Never reached: ``create_module`` refuses."""


if not any(isinstance(finder, NoTensorFlow) for finder in sys.meta_path):
    sys.meta_path.insert(0, NoTensorFlow())
