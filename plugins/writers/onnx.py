"""The ``onnx`` writer: OUT/model.onnx, the model after every rewrite pass (always written).

A model whose tensors take 1.8 GB or more is written with its weights in
``OUT/model.onnx.data`` beside it, copied file to file; the run then reads
them from there (conversion, verification), so what is converted and
verified is what was written.
"""

from __future__ import annotations

from pathlib import Path

from surgeon import NoOptions, Writer, hookimpl
from surgeon.context import Context


def write(ctx: Context, options: NoOptions, out_dir: Path) -> None:
    from surgeon.onnx_io import save_model

    save_model(ctx.model, ctx.onnx_path)


@hookimpl
def surgeon_writers():
    return [Writer(name="onnx", doc="OUT/model.onnx: the model after all rewrite plugins (always written; "
                   "with its weights in OUT/model.onnx.data beside it when they take 1.8 GB or more).",
                   write=write)]
