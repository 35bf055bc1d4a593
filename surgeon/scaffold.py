"""``surgeon new-plugin NAME``: a ready-to-install rewrite-plugin package.

The package holds a working pass (it removes Identity nodes: replace that
with your fix), its detector, a test using ``surgeon.testing``, and the
entry point that makes ``surgeon run --plugins NAME`` find it once installed.
"""

from __future__ import annotations

import re
from pathlib import Path

from surgeon.errors import UsageError

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "surgeon-{dashed}"
version = "0.1.0"
description = "{name}: a surgeon rewrite plugin"
requires-python = ">=3.10"
dependencies = ["surgeon"]

[project.optional-dependencies]
test = ["pytest"]

# this entry point is how `surgeon` finds the plugin once the package is installed
[project.entry-points.surgeon]
{name} = "surgeon_{name}"

[tool.setuptools]
py-modules = ["surgeon_{name}"]
'''

MODULE = '''\
"""{name}: a surgeon rewrite plugin.

Replace the example fix below (it removes Identity nodes) with yours: a pass
edits the onnx-graphsurgeon graph in place and keeps the model's meaning;
the detector finds the same places without changing anything.
"""

from dataclasses import dataclass, field

from surgeon import Finding, RewritePass, hookimpl


@dataclass(frozen=True)
class Options:
    keep_outputs: bool = field(default=True, metadata={{"doc": "keep Identities that produce graph outputs"}})


def targets(graph, options):
    """The nodes this pass rewrites."""
    outputs = {{id(tensor) for tensor in graph.outputs}}
    return [node for node in graph.nodes
            if node.op == "Identity" and not (options.keep_outputs and id(node.outputs[0]) in outputs)]


def run(graph, options):
    for node in targets(graph, options):
        source, alias = node.inputs[0], node.outputs[0]
        for consumer in list(alias.outputs):
            consumer.inputs[consumer.inputs.index(alias)] = source
        graph.outputs = [source if tensor is alias else tensor for tensor in graph.outputs]
        node.outputs.clear()  # the host's cleanup removes the node


def detect(graph, options):
    return [Finding(where=node.name or node.outputs[0].name, message="Identity node that can be removed")
            for node in targets(graph, options)]


@hookimpl
def surgeon_passes():
    return [RewritePass(name="{name}", doc="Remove Identity nodes (replace with your fix).", options=Options,
                        run=run, detect=detect)]
'''

TEST = '''\
import onnx_graphsurgeon as gs

from surgeon.testing import (apply_pass_with_record, assert_idempotent, assert_same_outputs, find_pass,
                             model_from_text)

MODEL = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 4] x) => (float[N, 4] y)
{{
    a = Identity(x)
    b = Relu(a)
    y = Add(b, a)
}}
"""


def test_rewrites_and_keeps_the_outputs():
    model = model_from_text(MODEL)
    rewritten, record = apply_pass_with_record("{name}", model)
    assert record.nodes_removed == 1
    assert_same_outputs(model, rewritten, batch_sizes=[1, 3, 8])


def test_idempotent():
    assert_idempotent("{name}", model_from_text(MODEL))


def test_detector_finds_what_the_pass_fixes():
    fix = find_pass("{name}")
    model = model_from_text(MODEL)
    assert len(fix.detect(gs.import_onnx(model), fix.options())) == 1
    fixed = apply_pass_with_record(fix, model)[0]
    assert fix.detect(gs.import_onnx(fixed), fix.options()) == []
'''

README = '''\
# surgeon-{dashed}

A [surgeon](https://pypi.org/project/surgeon/) rewrite plugin.

    pip install -e '.[test]'                      # registers the plugin through its entry point
    python -m pytest                              # its tests
    surgeon plugins                               # lists {name}
    surgeon inspect model.onnx                    # shows what {name} would fix
    surgeon run model.onnx -o out/ --plugins {name}
'''


def new_plugin(name: str, parent: Path) -> Path:
    """Write the package for plugin ``name`` into ``parent/surgeon-NAME``; return its folder."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise UsageError(f"plugin name {name!r}: use lowercase letters, digits and _, starting with a letter")
    from surgeon.discovery import discover

    if discover().find(name) is not None:
        raise UsageError(f"a plugin called {name!r} is already installed; choose another name")
    dashed = name.replace("_", "-")
    folder = parent / f"surgeon-{dashed}"
    if folder.exists():
        raise UsageError(f"{folder} already exists")
    files = {
        "pyproject.toml": PYPROJECT,
        f"surgeon_{name}.py": MODULE,
        f"tests/test_{name}.py": TEST,
        "README.md": README,
    }
    for relative, template in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(name=name, dashed=dashed))
    return folder
