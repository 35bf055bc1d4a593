"""ONNX files in and out: the ``onnx_file`` source and the ``onnx`` writer."""

from __future__ import annotations

from pathlib import Path

from surgeon import Source, Writer, hookimpl


def accepts(spec: str) -> bool:
    return spec.lower().endswith(".onnx")


def load(spec, options, ctx):
    from surgeon.onnx_io import load_model

    return load_model(Path(spec))


def write(ctx, options, out_dir: Path) -> None:
    from surgeon.onnx_io import save_model

    save_model(ctx.model, ctx.onnx_path)


@hookimpl
def surgeon_sources():
    return [Source(name="onnx_file", doc="Load an .onnx file (external data only from its own folder).",
                   accepts=accepts, load=load)]


@hookimpl
def surgeon_writers():
    return [Writer(name="onnx", doc="OUT/model.onnx: the model after all rewrite plugins (always written).",
                   write=write)]
