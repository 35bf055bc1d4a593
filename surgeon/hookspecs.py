"""Hook specifications: what a surgeon plugin module may implement.

A plugin module is any Python module with functions marked
``@surgeon.hookimpl`` whose names are below. It is found through the
entry-point group ``surgeon`` (the built-ins are registered that way too) or
loaded from a file with ``--plugin-path FILE.py``.

Every hook returns a list of the named things the module provides. The host
asks each module on its own, so one module that raises is reported by name
and the others still work. Names are global: two modules that provide the
same name are an error that names both.

Rewrite passes are not run as a broadcast hook: pluggy calls
implementations in reverse registration order, while passes must run in the
order the user gave to ``--plugins``. So modules *declare* passes here, and
the pipeline runs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from collections.abc import Sequence

    from surgeon.plugin import Converter, RewritePass, Source, Writer

hookspec = pluggy.HookspecMarker("surgeon")
hookimpl = pluggy.HookimplMarker("surgeon")


@hookspec
def surgeon_sources() -> Sequence[Source]:
    """Return the model sources this module provides.

    A :class:`~surgeon.plugin.Source` turns the SOURCE argument of
    ``surgeon run`` into an ``onnx.ModelProto``. The host calls
    ``accepts(spec)`` on every installed source; exactly one must accept the
    spec, so ``accepts`` must be cheap and must not import heavy packages
    (it runs for every ``surgeon run``). ``load(spec, options, ctx)`` is then
    called once; ``ctx`` is the run as a :class:`surgeon.context.Context` (a
    source that can run the original model gives it as the parity reference
    with ``ctx.set_reference``).

    ``load`` raises :class:`surgeon.SurgeonError` for input it cannot use,
    with a message naming the file or option at fault; any other exception
    is reported as a failure of this source.
    """


@hookspec
def surgeon_passes() -> Sequence[RewritePass]:
    """Return the rewrite passes this module provides.

    A :class:`~surgeon.plugin.RewritePass` edits an onnx-graphsurgeon graph
    in place. The host imports the ONNX model into onnx-graphsurgeon once,
    runs the passes the user named in ``--plugins`` in that order, then
    cleans up, sorts and exports once. So a pass:

    - edits the graph it is given and keeps the model's meaning;
    - may leave dangling nodes and tensors behind (cleanup removes them);
      the idiom to remove a node is ``node.outputs.clear()``;
    - must not export, re-import or replace the graph object;
    - returns ``None`` or a JSON-serialisable dict of details for
      ``report.json``. Nodes added, removed and rewritten, and renamed graph
      inputs and outputs, are counted by the host.

    After the last pass the host exports the graph once and runs the ONNX
    checker and strict shape inference on it. When that fails, it replays the
    passes one at a time, checking after each, to name the pass that broke the
    graph. A pass that raises is named in the error too.

    ``fixes`` declares the hazards (``surgeon.Hazard``) the pass removes, so a
    failed run names it; ``newest_opset``, for a pass that lowers opsets, the
    newest one it takes in.

    ``detect(graph, options)`` must not change the graph. It returns one
    :class:`~surgeon.plugin.Finding` per hazard the pass would fix, and is
    what ``surgeon inspect`` shows. A pass should be idempotent: on a graph
    where ``detect`` finds nothing, ``run`` changes nothing.
    """


@hookspec
def surgeon_converters() -> Sequence[Converter]:
    """Return the ONNX -> TensorFlow converters this module provides.

    A :class:`~surgeon.plugin.Converter` writes a SavedModel (tag ``serve``,
    signature ``serving_default`` keyed by the ONNX input and output names,
    inputs TensorFlow cannot take by the keys of
    ``surgeon.naming.signature_input_keys``)
    into an empty directory. It is called at most once per run, and only
    when a requested writer needs a SavedModel, so TensorFlow is never
    imported for ONNX-only runs. Import heavy packages inside ``convert``.

    ``convert`` raises :class:`surgeon.SurgeonError` with a ``hazard`` when
    the failure is one a rewrite pass may fix: the host then names the
    passes that fix it.
    """


@hookspec
def surgeon_writers() -> Sequence[Writer]:
    """Return the output formats this module provides.

    A :class:`~surgeon.plugin.Writer` named ``NAME`` is selected with
    ``--format NAME`` and writes below the run's output directory. It writes
    into a staging directory that the host renames into place when every
    writer and the verification succeeded, so a writer never needs to clean
    up after a failure. ``write(ctx, options, out_dir)`` reads the run from
    ``ctx`` (a :class:`surgeon.context.Context`), records its details with
    ``ctx.record`` and names what a server would load in
    ``ctx.served_models`` so that verification runs it.
    """
