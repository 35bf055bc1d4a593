"""triton: a Triton Inference Server model repository (``--format triton``).

Writes ``OUT/triton/<name>/config.pbtxt`` with ``1/model.savedmodel/``
(platform ``tensorflow_savedmodel``) and, because Triton's TensorFlow backend
is deprecated (DESIGN.md F9), the same ONNX as a second model
``<name>_onnx`` (platform ``onnxruntime_onnx``) with identical tensor names,
dims and max_batch_size.

With ``repository`` set, the new version is also published into that
existing repository after the whole run succeeded: staged in a hidden
folder inside the model folder (Triton ignores non-numeric folders), then
renamed to the next free version number, leaving other versions untouched.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import onnx

from surgeon import SurgeonError, Writer, hookimpl
from surgeon.onnx_io import real_inputs
from surgeon.output import link_tree
from surgeon.verify import static_batch

TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16", onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16", onnx.TensorProto.BOOL: "TYPE_BOOL", onnx.TensorProto.STRING: "TYPE_STRING",
    onnx.TensorProto.INT8: "TYPE_INT8", onnx.TensorProto.INT16: "TYPE_INT16", onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.UINT32: "TYPE_UINT32", onnx.TensorProto.UINT64: "TYPE_UINT64",
}
PLATFORMS = {"savedmodel": ("tensorflow_savedmodel", "model.savedmodel"), "onnx": ("onnxruntime_onnx", "model.onnx")}


@dataclass(frozen=True)
class TritonOptions:
    name: str = field(default="", metadata={"doc": "model name (default: from SOURCE)"})
    version: int = field(default=0, metadata={"doc": "version folder (default: 1, or the next free one)"})
    max_batch_size: int = field(default=8, metadata={"doc": "used when the batch is dynamic; 0 when it is fixed"})
    dynamic_batching: bool = field(default=False, metadata={"doc": "let Triton batch requests together"})
    preferred_batch_sizes: list[int] = field(default_factory=list, metadata={"doc": "with dynamic_batching"})
    max_queue_delay_us: int = field(default=0, metadata={"doc": "with dynamic_batching: how long to wait for more"})
    instance_count: int = field(default=0, metadata={"doc": "model instances (0: Triton's default)"})
    instance_kind: Literal["auto", "cpu", "gpu"] = "auto"
    onnx: bool = field(default=True, metadata={"doc": "also write <name>_onnx for the ONNX Runtime backend"})
    repository: str = field(default="", metadata={"doc": "also publish into this existing repository"})


def write(ctx, options: TritonOptions, out_dir: Path) -> None:
    name = options.name or default_name(ctx.config.source)
    version = str(options.version or 1)
    root = out_dir / "triton"
    for model_name, kind in models(name, options):
        folder = root / model_name
        (folder / version).mkdir(parents=True)
        (folder / "config.pbtxt").write_text(config_text(ctx.model, model_name, kind, options))
        if kind == "savedmodel":
            link_tree(ctx.saved_model(), folder / version / PLATFORMS[kind][1])
            if "saved_model" not in ctx.served_models:  # the same SavedModel: verify it once
                ctx.served_models["triton"] = folder / version / PLATFORMS[kind][1]
        else:
            shutil.copy2(ctx.onnx_path, folder / version / PLATFORMS[kind][1])


def publish(ctx, options: TritonOptions, out_dir: Path) -> None:
    """Add the version written in OUT to ``options.repository`` as a new version folder."""
    if not options.repository:
        return
    repository = Path(options.repository)
    if not repository.is_dir():
        raise SurgeonError(f"triton.repository {repository}: no such folder")
    name = options.name or default_name(ctx.config.source)
    written = out_dir / "triton"
    for model_name, kind in models(name, options):
        source = written / model_name
        target = repository / model_name
        target.mkdir(exist_ok=True)
        version = options.version or next_version(target)
        if (target / str(version)).exists():
            raise SurgeonError(f"triton.repository: {target / str(version)} exists; versions are never overwritten")
        staging = Path(tempfile.mkdtemp(prefix=".surgeon-", dir=target))
        try:
            shutil.copytree(next(p for p in source.iterdir() if p.is_dir()), staging / "version")
            _replace_file(target / "config.pbtxt", (source / "config.pbtxt").read_text())
            (staging / "version").rename(target / str(version))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        ctx.report.setdefault("triton_published", []).append(str(target / str(version)))


def models(name: str, options: TritonOptions) -> list[tuple[str, str]]:
    return [(name, "savedmodel")] + ([(f"{name}_onnx", "onnx")] if options.onnx else [])


def default_name(source: str) -> str:
    """A model name from SOURCE: ``m.onnx`` -> ``m``, ``net.py:build`` -> ``build``, ``example:ct-position`` -> ``ct_position``."""
    stem = Path(source.rsplit(":", 1)[-1]).stem
    return re.sub(r"\W+", "_", stem).strip("_") or "model"


def next_version(folder: Path) -> int:
    versions = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def config_text(model: onnx.ModelProto, name: str, kind: str, options: TritonOptions) -> str:
    """config.pbtxt for ``model`` served by the backend of ``kind``."""
    batched = static_batch(model) is None
    lines = [f'name: "{name}"', f'platform: "{PLATFORMS[kind][0]}"',
             f"max_batch_size: {options.max_batch_size if batched else 0}"]
    for heading, values in (("input", real_inputs(model)), ("output", list(model.graph.output))):
        entries = [tensor_entry(value, batched) for value in values]
        lines.append(f"{heading} [\n" + ",\n".join(entries) + "\n]")
    if options.dynamic_batching and batched:
        preferred = f" preferred_batch_size: [ {', '.join(map(str, options.preferred_batch_sizes))} ]" \
            if options.preferred_batch_sizes else ""
        delay = f" max_queue_delay_microseconds: {options.max_queue_delay_us}" if options.max_queue_delay_us else ""
        lines.append(f"dynamic_batching {{{preferred}{delay} }}")
    if options.instance_count or options.instance_kind != "auto":
        count = f" count: {options.instance_count}" if options.instance_count else ""
        kind_line = f" kind: KIND_{options.instance_kind.upper()}" if options.instance_kind != "auto" else ""
        lines.append(f"instance_group [ {{{count}{kind_line} }} ]")
    return "\n".join(lines) + "\n"


def tensor_entry(value: onnx.ValueInfoProto, batched: bool) -> str:
    tensor_type = value.type.tensor_type
    if tensor_type.elem_type not in TRITON_TYPES:
        raise SurgeonError(f"tensor {value.name!r} has a type Triton cannot serve "
                           f"({onnx.TensorProto.DataType.Name(tensor_type.elem_type)})")
    dims = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim]
    if batched:
        dims = dims[1:]
    # Triton needs at least one dim: a per-sample scalar is dims [1] reshaped to []
    shape = f"dims: [ {', '.join(map(str, dims))} ]" if dims else "dims: [ 1 ] reshape: { shape: [ ] }"
    return f'  {{ name: "{value.name}" data_type: {TRITON_TYPES[tensor_type.elem_type]} {shape} }}'


def _replace_file(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.replace(path)


@hookimpl
def surgeon_writers():
    return [Writer(name="triton", doc="OUT/triton: a Triton model repository (SavedModel + ONNX Runtime models).",
                   options=TritonOptions, write=write, publish=publish, needs_saved_model=True)]
