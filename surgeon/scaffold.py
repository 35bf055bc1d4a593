"""``surgeon new-plugin NAME``: a ready-to-install rewrite-plugin package.

The package holds a working pass built with the graph kit ``surgeon.graph``
(it turns divisions by a constant into multiplications: replace that with
your fix), its detector, a test using ``surgeon.testing``, and the entry
point that makes ``surgeon run --plugins NAME`` find it once installed.
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

Replace the example fix below with yours. It turns a division by a constant
scalar into a multiplication, and drops a division by 1. A pass edits the
onnx-graphsurgeon graph in place and keeps the model's meaning, building
what it adds with the graph kit (``surgeon.graph``); the detector finds the
same places without changing anything.
"""

from dataclasses import dataclass, field

from surgeon import Finding, RewritePass, hookimpl
from surgeon.graph import Builder, constant_value, describe


@dataclass(frozen=True)
class Options:
    keep_outputs: bool = field(default=True, metadata={{
        "doc": "keep divisions by 1 that produce graph outputs (removing one renames the output)"}})


def divisor(node):
    """The constant float scalar a Div node divides by; None for any other node."""
    if node.op != "Div":
        return None
    value = constant_value(node.inputs[1])
    return value if value is not None and value.ndim == 0 and value.dtype.kind == "f" else None


def targets(graph, options):
    """(node, divisor) for each division this pass rewrites."""
    outputs = {{id(tensor) for tensor in graph.outputs}}
    found = []
    for node in graph.nodes:
        value = divisor(node)
        if value is None or (value == 1 and options.keep_outputs and id(node.outputs[0]) in outputs):
            continue
        found.append((node, value))
    return found


def run(graph, options):
    build = Builder(graph, prefix="{name}/")
    for node, value in targets(graph, options):
        dividend, quotient = node.inputs[0], node.outputs[0]
        node.outputs.clear()  # the host's cleanup removes the Div
        if value == 1:  # its consumers, graph outputs included, read the dividend instead
            for consumer in list(quotient.outputs):
                for index, tensor in enumerate(consumer.inputs):
                    if tensor is quotient:
                        consumer.inputs[index] = dividend
            graph.outputs = [dividend if tensor is quotient else tensor for tensor in graph.outputs]
        else:  # a Mul produces the same tensor, so its consumers and graph outputs stay as they are
            build.op("Mul", [dividend, build.const("reciprocal", 1 / value, value.dtype)], "mul", output=quotient)


def detect(graph, options):
    return [Finding(where=describe(node), nodes=(node.name,), message="divides by 1: it can go" if value == 1
                    else f"divides by the constant {{value}}: a multiplication is cheaper")
            for node, value in targets(graph, options)]


@hookimpl
def surgeon_passes():
    return [RewritePass(name="{name}", doc="Divisions by a constant become multiplications (replace with your fix).",
                        options=Options, run=run, detect=detect)]
'''

TEST = '''\
import onnx_graphsurgeon as gs

from surgeon.testing import (apply_pass_with_record, assert_idempotent, assert_same_outputs, find_pass,
                             model_from_text)

MODEL = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 4] x) => (float[N, 4] y) <float four = {{4.0}}, float one = {{1.0}}>
{{
    a = Div(x, four)
    b = Div(a, one)
    c = Mul(b, b)
    y = Div(c, one)
}}
"""


def test_rewrites_and_keeps_the_outputs():
    model = model_from_text(MODEL)
    rewritten, record = apply_pass_with_record("{name}", model)
    assert (record.nodes_added, record.nodes_removed) == (1, 2)  # a Mul for a Div, and one Div by 1 gone
    assert_same_outputs(model, rewritten, batch_sizes=[1, 3, 8])


def test_idempotent():
    assert_idempotent("{name}", model_from_text(MODEL))


def test_detector_finds_what_the_pass_fixes():
    fix = find_pass("{name}")
    model = model_from_text(MODEL)
    assert [finding.where for finding in fix.detect(gs.import_onnx(model), fix.options())] == [
        "the Div node making 'a'", "the Div node making 'b'"]
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
