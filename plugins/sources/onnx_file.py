"""The ``onnx_file`` source: an .onnx file, with external data only from its own folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from surgeon import NoOptions, Source, hookimpl
from surgeon.context import Context

if TYPE_CHECKING:
    import onnx


def accepts(spec: str) -> bool:
    return spec.lower().endswith(".onnx")


def load(spec: str, options: NoOptions, ctx: Context) -> onnx.ModelProto:
    from surgeon.onnx_io import load_model

    return load_model(Path(spec))


@hookimpl
def surgeon_sources():
    return [Source(name="onnx_file", doc="Load an .onnx file (external data only from its own folder).",
                   accepts=accepts, load=load)]
