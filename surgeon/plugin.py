"""What a plugin provides: sources, rewrite passes, converters and writers.

A plugin module returns these from its hook implementations (see
``surgeon.hookspecs``). Each has a ``name`` users type on the command line, a
one-line ``doc`` shown by ``surgeon plugins``, and an ``options`` dataclass
whose fields are set with ``--set NAME.FIELD=VALUE`` or in a pipeline file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional

if TYPE_CHECKING:
    import onnx
    import onnx_graphsurgeon as gs

    from surgeon.pipeline import RunContext


@dataclass(frozen=True)
class NoOptions:
    """The options of a plugin that takes none."""


@dataclass(frozen=True)
class Finding:
    """A hazard a detector found: where it is and why it matters."""

    where: str
    message: str


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
    """

    accepts: Callable[[str], bool]
    load: Callable[[str, Any, "RunContext"], "onnx.ModelProto"]
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
    """

    run: Callable[["gs.Graph", Any], Optional[dict]]
    detect: Callable[["gs.Graph", Any], list[Finding]] = lambda graph, options: []
    original_inputs: Optional[Callable[[list, Any], list]] = None
    kind: ClassVar[str] = "pass"


@dataclass(frozen=True, kw_only=True)
class Converter(Plugin):
    """Converts the rewritten ONNX model into a TensorFlow SavedModel.

    ``convert(model, options, target, ctx)`` writes the SavedModel into the
    empty directory ``target``.
    """

    convert: Callable[["onnx.ModelProto", Any, Path, "RunContext"], None]
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

    write: Callable[["RunContext", Any, Path], None]
    publish: Optional[Callable[["RunContext", Any, Path], None]] = None
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
    "NoOptions",
    "Plugin",
    "RewritePass",
    "Source",
    "Writer",
    "option_defaults",
]
