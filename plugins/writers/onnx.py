"""The ``onnx`` writer: OUT/model.onnx, the model after every rewrite pass (always written)."""

from __future__ import annotations

from pathlib import Path

from surgeon import NoOptions, Writer, hookimpl
from surgeon.context import Context


def write(ctx: Context, options: NoOptions, out_dir: Path) -> None:
    from surgeon.onnx_io import save_model

    save_model(ctx.model, ctx.onnx_path)


@hookimpl
def surgeon_writers():
    return [Writer(name="onnx", doc="OUT/model.onnx: the model after all rewrite plugins (always written).",
                   write=write)]
