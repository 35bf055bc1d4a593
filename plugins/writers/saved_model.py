"""saved_model: OUT/saved_model, the SavedModel that TF Serving and Triton mount.

The converter has already checked it against the serving contract and for
Python callbacks (see ``surgeon_plugins.converters.onnx_tf.check_servable``);
verification runs it in a fresh process, as a server would.

The folder carries what made it: TensorFlow's version in ``saved_model.pb``,
and the rest of the stack (onnx-tf, onnx, torch, ...) in
``assets.extra/surgeon.json``, written by the pipeline right after conversion
so that every copy (this one, Triton's ``model.savedmodel``) has it; servers
ignore ``assets.extra``. ``surgeon inspect OUT/saved_model`` prints both.
"""

from __future__ import annotations

from pathlib import Path

from surgeon import NoOptions, Writer, hookimpl
from surgeon.context import Context
from surgeon.output import link_tree


def write(ctx: Context, options: NoOptions, out_dir: Path) -> None:
    target = out_dir / "saved_model"
    link_tree(ctx.saved_model(), target)
    ctx.served_models["saved_model"] = target


@hookimpl
def surgeon_writers():
    return [Writer(name="saved_model", doc="OUT/saved_model: SavedModel for TF Serving and Triton, signature "
                   "serving_default keyed by the ONNX names; refuses models that call back into Python. "
                   "assets.extra/surgeon.json names the versions that made it.",
                   write=write, needs_saved_model=True)]
