"""What a plugin provides: sources, rewrite passes, converters and writers.

A plugin module returns these from its hook implementations (see
``surgeon.hookspecs``). Each has a ``name`` users type on the command line, a
one-line ``doc`` shown by ``surgeon plugins``, and an ``options`` dataclass
whose fields are set with ``--set NAME.FIELD=VALUE`` or in a pipeline file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import onnx
    import onnx_graphsurgeon as gs

    from surgeon.context import Context


class Hazard(str, Enum):
    """A kind of failure on the road to a served model. A pass declares the ones it fixes
    (``RewritePass.fixes``); an error names the one it is (``SurgeonError.hazard``), so that a failed run names
    exactly the passes that fix it."""

    UNCONVERTIBLE_NODE = "unconvertible_node"
    """The converter cannot convert a node: no handler for its operator at its version, or one that fails on it."""
    PYTHON_CALLBACK = "python_callback"
    """The converter would run a node through Python (a PyFunc), which no server can load."""
    FIXED_BATCH = "fixed_batch"
    """The export's batch size is baked into the graph, so other batch sizes fail or mix samples."""


@dataclass(frozen=True)
class NoOptions:
    """The options of a plugin that takes none."""


@dataclass(frozen=True)
class Finding:
    """A hazard a detector found: where it is and why it matters.

    ``nodes``: the names of the ONNX nodes it is about, so that a failure at one of them names the pass that fixes
    it. ``fixable``: False when the pass sees the hazard but cannot fix it there (the message says why).
    """

    where: str
    message: str
    nodes: tuple[str, ...] = ()
    fixable: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(name for name in self.nodes if name))  # unnamed nodes match nothing


@dataclass(frozen=True, kw_only=True)
class Plugin:
    name: str
    doc: str
    options: type = NoOptions
    kind: ClassVar[str] = "plugin"

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.options):
            raise TypeError(f"{self.name}: options must be a dataclass type, got {self.options!r}")


@dataclass(frozen=True, kw_only=True)
class Source(Plugin):
    """Turns the SOURCE of ``surgeon run`` into an ONNX model.

    ``accepts(spec)`` says, cheaply and without importing heavy packages,
    whether this source understands the spec; ``load(spec, options, ctx)``
    returns the ``onnx.ModelProto``.

    A source that exports (PyTorch, say) may give ``load_with_dynamic_batch``:
    the model exported again with a symbolic batch axis. When a pass that
    fixes a fixed batch refuses the first export, the host loads that instead
    and runs the other passes on it; verification at several batch sizes
    then proves the exporter's dynamic batch.
    """

    accepts: Callable[[str], bool]
    load: Callable[[str, Any, "Context"], "onnx.ModelProto"]
    load_with_dynamic_batch: Callable[[str, Any, "Context"], "onnx.ModelProto"] | None = None
    kind: ClassVar[str] = "source"


@dataclass(frozen=True, kw_only=True)
class RewritePass(Plugin):
    """A graph rewrite run in the order the user names it in ``--plugins``.

    ``run(graph, options)`` edits the onnx-graphsurgeon graph in place and may
    return a dict of details for the report. ``detect(graph, options)``
    returns the hazards this pass would fix, without changing the graph.

    A pass that changes what the model takes (baking preprocessing in, say)
    gives ``original_inputs(inputs, options)``: from the arrays fed to the
    graph after the pass, the arrays the graph before it needs to compute the
    same outputs. Verification feeds the source model through it.

    ``fixes`` names the hazards the pass removes: when a run fails on one, the
    error names the passes that fix it (and, when such a pass is not in the
    run, what its detector finds). ``newest_opset``: a pass that brings any
    opset up to this one within the converter's reach says so; sources then
    export at a newer opset when such a pass runs.
    """

    run: Callable[["gs.Graph", Any], dict | None]
    detect: Callable[["gs.Graph", Any], list[Finding]] = lambda graph, options: []
    original_inputs: Callable[[list, Any], list] | None = None
    fixes: frozenset[Hazard] = field(default_factory=frozenset)
    newest_opset: int | None = None
    kind: ClassVar[str] = "pass"


@dataclass(frozen=True, kw_only=True)
class Converter(Plugin):
    """Converts the rewritten ONNX model into a TensorFlow SavedModel.

    ``convert(model, options, target, ctx)`` writes the SavedModel into the
    empty directory ``target``.
    """

    convert: Callable[["onnx.ModelProto", Any, Path, "Context"], None]
    kind: ClassVar[str] = "converter"


@dataclass(frozen=True, kw_only=True)
class Writer(Plugin):
    """Writes one output format into the run's output directory.

    ``write(ctx, options, out_dir)`` writes below ``out_dir`` (a staging
    directory renamed into place when the whole run succeeded). A writer
    with ``needs_saved_model`` gets ``ctx.saved_model()``, converted once
    and shared by all writers. ``publish(ctx, options, out)``, when given, runs
    after OUT is complete and in place, to copy results somewhere outside it
    (a live model repository, say).
    """

    write: Callable[["Context", Any, Path], None]
    publish: Callable[["Context", Any, Path], None] | None = None
    needs_saved_model: bool = False
    kind: ClassVar[str] = "writer"


KINDS: tuple[type[Plugin], ...] = (Source, RewritePass, Converter, Writer)


def option_defaults(options_type: type) -> dict[str, Any]:
    """The options of ``options_type`` with their defaults, for listings."""
    defaults = {}
    for option in dataclasses.fields(options_type):
        if option.default is not dataclasses.MISSING:
            defaults[option.name] = option.default
        elif option.default_factory is not dataclasses.MISSING:
            defaults[option.name] = option.default_factory()
        else:
            defaults[option.name] = None
    return defaults


__all__ = [
    "Converter",
    "Finding",
    "Hazard",
    "NoOptions",
    "Plugin",
    "RewritePass",
    "Source",
    "Writer",
    "option_defaults",
]
