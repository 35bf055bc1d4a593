"""What the installed onnx-tf converts: its (operator, version) handlers, read without TensorFlow.

onnx-tf hands a node to the method ``version_S`` of the operator's handler,
where S is the ``since_version`` of the operator's schema at the model's
opset (``onnx_tf/handlers/handler.py``); without that method the conversion
fails with "OP version S is not implemented". The package's
``opset_version.py`` lists those methods per operator as a plain dict
(generated from the handlers; the tests check it against them), so it is
read here as text: ``surgeon inspect`` must not import TensorFlow, which
importing onnx_tf does.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from surgeon import SurgeonError

if TYPE_CHECKING:
    import onnx

ONNX_DOMAINS = ("", "ai.onnx")
# onnx-tf declares tensorflow-addons, which has no wheel for Python >= 3.12 and breaks under Keras 3;
# surgeon supplies what onnx-tf took from it (compat.py), so onnx-tf is installed without it
INSTALL_ONNX_TF = "pip install --no-deps onnx-tf==1.10.0"


@dataclass(frozen=True)
class Handlers:
    """The installed onnx-tf's handler versions per ONNX operator, and its notes on partial support."""

    version: str
    versions: dict[str, frozenset[int]]
    partial: dict[str, str]

    def converts(self, op: str, since: int | None) -> bool:
        """Whether onnx-tf has a handler for schema version ``since`` of ``op`` (default domain)."""
        return since is not None and since in self.versions.get(op, ())

    def describe(self, op: str) -> str:
        """The versions onnx-tf implements for ``op``, for messages."""
        versions = sorted(self.versions.get(op, ()))
        if not versions:
            return f"onnx-tf {self.version} has no handler for {op}"
        return f"onnx-tf {self.version} implements {op}-" + ", -".join(map(str, versions))


@lru_cache(maxsize=1)
def handlers() -> Handlers:
    """The handler table of the installed onnx-tf (read once per process)."""
    spec = importlib.util.find_spec("onnx_tf")
    if spec is None or not spec.submodule_search_locations:
        raise SurgeonError("onnx-tf is not installed: opset_compat follows the installed onnx-tf's operators",
                           hint=INSTALL_ONNX_TF)
    version = importlib.metadata.version("onnx-tf")
    tables = _literal_dicts(Path(spec.submodule_search_locations[0]) / "opset_version.py")
    if "backend_opset_version" in tables:
        return Handlers(version, {op: frozenset(v) for op, v in tables["backend_opset_version"].items()},
                        dict(tables.get("backend_partial_support", {})))
    return _handlers_from_import(version)


def _literal_dicts(path: Path) -> dict[str, dict]:
    """The module-level ``NAME = {literal dict}`` assignments of a Python file."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return {}
    tables = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1 and isinstance(
                statement.targets[0], ast.Name):
            try:
                value = ast.literal_eval(statement.value)
            except ValueError:
                continue
            if isinstance(value, dict):
                tables[statement.targets[0].id] = value
    return tables


def _handlers_from_import(version: str) -> Handlers:
    """Ask the handlers themselves (imports TensorFlow): for an onnx-tf without a readable opset_version.py."""
    from surgeon_plugins.converters.onnx_tf.compat import imported_onnx_tf

    imported_onnx_tf()
    from onnx_tf.common.handler_helper import get_backend_coverage, get_backend_partial_support_detail

    coverage, _ = get_backend_coverage()
    return Handlers(version, {op: frozenset(v) for op, v in coverage.get("", {}).items()},
                    get_backend_partial_support_detail())


@lru_cache(maxsize=None)
def since_version(op: str, opset: int) -> int | None:
    """The version of ``op``'s schema in force at ``opset`` (default domain); None when ``op`` does not exist there."""
    import onnx.defs

    try:
        return onnx.defs.get_schema(op, opset, "").since_version
    except onnx.defs.SchemaError:
        return None


def unconvertible(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str]]:
    """The nodes of ``model`` (subgraphs included) that the installed onnx-tf has no handler for, each with its
    operator and schema version as ``Squeeze-13`` (or ``domain.Op``). Reads the model only: no TensorFlow."""
    table = handlers()
    opset = next((entry.version for entry in model.opset_import if entry.domain in ONNX_DOMAINS), 1)
    found = []
    for node in all_nodes(model.graph):
        if node.domain not in ONNX_DOMAINS:
            found.append((node, f"{node.domain}.{node.op_type}"))
            continue
        since = since_version(node.op_type, opset)
        if not table.converts(node.op_type, since):
            found.append((node, f"{node.op_type}-{since}" if since else node.op_type))
    return found


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """The nodes of ``graph`` and of the subgraphs in their attributes (If, Loop, Scan), depth first."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.HasField("g") else []
            for subgraph in [*subgraphs, *attribute.graphs]:
                yield from all_nodes(subgraph)


__all__ = ["Handlers", "INSTALL_ONNX_TF", "ONNX_DOMAINS", "all_nodes", "handlers", "since_version", "unconvertible"]
