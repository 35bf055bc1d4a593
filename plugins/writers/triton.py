"""triton: a Triton Inference Server model repository (``--format triton``).

Writes two models with identical dims and max_batch_size:

- ``OUT/triton/<name>/``: ``config.pbtxt`` with ``1/model.savedmodel/``
  (platform ``tensorflow_savedmodel``), for Triton's TensorFlow backend.
  Its tensors are named by the keys of the SavedModel's serving signature,
  which differ from the ONNX names for inputs TensorFlow cannot take as keys
  (``input.1`` -> ``input_1``: ``surgeon.naming.signature_input_keys``).
  Triton deprecated that backend in release 25.03 and stopped building it:
  25.02 is the last release whose containers can load this entry.
- ``OUT/triton/<name>_onnx/``: ``config.pbtxt`` with ``1/model.onnx``
  (platform ``onnxruntime_onnx``), the same ONNX as ``OUT/model.onnx``, for
  the ONNX Runtime backend: the entry every current release loads, and the
  only one from 25.03 on. Its tensors keep the ONNX names.

Each config turns Triton's dynamic batching on when the batch is dynamic
(``--set triton.dynamic_batching=false`` turns it off) and names an instance
group (``KIND_AUTO``: GPU when Triton sees one, else CPU; ``instance_kind``
and ``instance_count`` choose).

With ``repository`` set, the new version is also published into that
existing repository after the whole run succeeded, all entries or none:
each is staged in a hidden folder inside its model folder (Triton ignores
non-numeric folders there), then all are renamed to the next free version
number, leaving other versions untouched; if any step fails, what this run
staged, renamed or replaced is taken back.

After the run, the docker command that starts Triton on the repository and
the ``perf_analyzer`` command that measures the served model are logged and
kept in the report (``triton_commands``).
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx
from google.protobuf.text_encoding import CEscape

from surgeon import SurgeonError, Writer, hookimpl
from surgeon.naming import signature_input_keys
from surgeon.onnx_io import real_inputs
from surgeon.output import link_or_copy, link_tree
from surgeon.publish import Entry, default_name, publish_versions as publish_entries
from surgeon.feeds import SYMBOLIC_DIM_SIZE, static_batch

log = logging.getLogger("surgeon")

TRITON_TYPES: dict[int, str] = {  # keyed by data type, the int that TypeProto.Tensor.elem_type holds
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16", onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16", onnx.TensorProto.BOOL: "TYPE_BOOL", onnx.TensorProto.STRING: "TYPE_STRING",
    onnx.TensorProto.INT8: "TYPE_INT8", onnx.TensorProto.INT16: "TYPE_INT16", onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.UINT32: "TYPE_UINT32", onnx.TensorProto.UINT64: "TYPE_UINT64",
}
PLATFORMS = {"savedmodel": ("tensorflow_savedmodel", "model.savedmodel"), "onnx": ("onnxruntime_onnx", "model.onnx")}

# Triton 25.02 is the last release whose containers hold the TensorFlow backend (its build script builds it;
# from 25.03 on it is deprecated and no longer built). The ONNX Runtime backend is in every release.
LAST_TENSORFLOW_RELEASE = "25.02"
DEFAULT_RELEASE = "26.07"  # a current release, for the printed docker command
IMAGE = "nvcr.io/nvidia/tritonserver:{release}-py3"
PORTS = (8000, 8001, 8002)  # HTTP, GRPC, metrics
GRPC_URL = "localhost:8001"
CONCURRENCY = "1:4"


@dataclass(frozen=True)
class TritonOptions:
    name: str = field(default="", metadata={"doc": "model name (default: from SOURCE)"})
    version: int = field(default=0, metadata={"doc": "version folder (default: 1, or the next free one)"})
    max_batch_size: int = field(default=8, metadata={"doc": "used when the batch is dynamic; 0 when it is fixed"})
    dynamic_batching: bool = field(default=True, metadata={
        "doc": "let Triton batch requests together (when the batch is dynamic)"})
    preferred_batch_sizes: list[int] = field(default_factory=list, metadata={"doc": "with dynamic_batching"})
    max_queue_delay_us: int = field(default=0, metadata={"doc": "with dynamic_batching: how long to wait for more"})
    instance_count: int = field(default=0, metadata={
        "doc": "model instances, on each GPU with KIND_GPU (0: Triton's default)"})
    instance_kind: Literal["auto", "cpu", "gpu"] = field(default="auto", metadata={
        "doc": "where instances run: auto (KIND_AUTO: a GPU when Triton sees one), cpu or gpu"})
    onnx: bool = field(default=True, metadata={
        "doc": "also write <name>_onnx for the ONNX Runtime backend: the entry Triton loads from 25.03 on "
               "(<name>, the SavedModel, needs the TensorFlow backend: Triton 25.02 or earlier)"})
    repository: str = field(default="", metadata={"doc": "also publish into this existing repository"})
    release: str = field(default="", metadata={
        "doc": f"Triton release (YY.MM) in the printed docker command (default: {DEFAULT_RELEASE}; "
               f"{LAST_TENSORFLOW_RELEASE} with onnx=false)"})

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1 (a fixed batch gets 0 by itself)")
        wrong = [size for size in self.preferred_batch_sizes if not 1 <= size <= self.max_batch_size]
        if wrong:
            raise ValueError(f"preferred_batch_sizes {wrong[0]} is not within 1..max_batch_size "
                             f"({self.max_batch_size})")
        if self.version < 0 or self.instance_count < 0 or self.max_queue_delay_us < 0:
            raise ValueError("version, instance_count and max_queue_delay_us cannot be negative")
        if self.release and not re.fullmatch(r"\d{2}\.\d{2}", self.release):
            raise ValueError(f"release {self.release!r} is not YY.MM, e.g. {DEFAULT_RELEASE}")


def write(ctx, options: TritonOptions, out_dir: Path) -> None:
    name = options.name or default_name(ctx.config.source)
    version = str(options.version or 1)
    root = out_dir / "triton"
    # the same SavedModel as OUT/saved_model: verify it once, whichever writer runs first
    verified_elsewhere = any(writer.name == "saved_model" for writer, _ in ctx.plan.writers)
    for model_name, kind in models(name, options):
        folder = root / model_name
        (folder / version).mkdir(parents=True)
        (folder / "config.pbtxt").write_text(config_text(ctx.model, model_name, kind, options))
        if kind == "savedmodel":
            link_tree(ctx.saved_model(), folder / version / PLATFORMS[kind][1])
            if not verified_elsewhere:  # a triton-only run: verification loads this entry in a fresh process
                ctx.served_models["triton"] = folder / version / PLATFORMS[kind][1]
        else:
            copy_onnx(ctx.onnx_path, folder / version / PLATFORMS[kind][1])


def copy_onnx(model: Path, target: Path) -> None:
    """``model`` as ``target``, with the file of its weights beside it when they are external (a model over
    the size of one protobuf message: ``model.onnx.data``, which the model names relative to itself)."""
    shutil.copy2(model, target)
    data = model.with_name(f"{model.name}.data")
    if data.exists():
        link_or_copy(data, target.with_name(data.name))


def publish(ctx, options: TritonOptions, out_dir: Path) -> None:
    """After the run: publish into ``options.repository`` when set, then log how to serve and measure the model."""
    name = options.name or default_name(ctx.config.source)
    served = out_dir / "triton"
    if options.repository:
        repository = Path(options.repository)
        published = publish_versions(repository, [out_dir / "triton" / model for model, _ in models(name, options)],
                                     options.version)
        ctx.report.setdefault("triton_published", []).extend(str(path) for path in published)
        served = repository
    batched = static_batch(ctx.model) is None
    commands = serving_commands(ctx.model, name, options, served, verified_batch(ctx.report, options, batched))
    ctx.report["triton_commands"] = commands
    if not options.onnx and not loads_tensorflow(commands["release"]):
        log.warning("triton: Triton %s has no TensorFlow backend and cannot load %s; use release %s or earlier, "
                    "or leave triton.onnx on", commands["release"], name, LAST_TENSORFLOW_RELEASE)
    for line in commands_text(name, options, commands):
        log.info("%s", line)


def models(name: str, options: TritonOptions) -> list[tuple[str, str]]:
    return [(name, "savedmodel")] + ([(f"{name}_onnx", "onnx")] if options.onnx else [])


def input_names(model: onnx.ModelProto, kind: str) -> dict[str, str]:
    """Each input's ONNX name -> the name the entry of ``kind`` takes it by: its signature key for the SavedModel."""
    names = [value.name for value in real_inputs(model)]
    if kind == "savedmodel":
        return signature_input_keys(names, [value.name for value in model.graph.output])
    return dict(zip(names, names))


def config_text(model: onnx.ModelProto, name: str, kind: str, options: TritonOptions) -> str:
    """config.pbtxt for ``model`` served by the backend of ``kind``."""
    batched = static_batch(model) is None
    lines = [f'name: "{name}"', f'platform: "{PLATFORMS[kind][0]}"',
             f"max_batch_size: {options.max_batch_size if batched else 0}"]
    names = input_names(model, kind)
    inputs = [tensor_entry(names[value.name], value, batched) for value in real_inputs(model)]
    outputs = [tensor_entry(value.name, value, batched) for value in model.graph.output]
    for heading, entries in (("input", inputs), ("output", outputs)):
        lines.append(f"{heading} [\n" + ",\n".join(entries) + "\n]")
    if options.dynamic_batching and batched:
        preferred = f" preferred_batch_size: [ {', '.join(map(str, options.preferred_batch_sizes))} ]" \
            if options.preferred_batch_sizes else ""
        delay = f" max_queue_delay_microseconds: {options.max_queue_delay_us}" if options.max_queue_delay_us else ""
        lines.append(f"dynamic_batching {{{preferred}{delay} }}")
    count = f" count: {options.instance_count}" if options.instance_count else ""
    lines.append(f"instance_group [ {{{count} kind: KIND_{options.instance_kind.upper()} }} ]")
    return "\n".join(lines) + "\n"


def tensor_entry(name: str, value: onnx.ValueInfoProto, batched: bool) -> str:
    """The config entry of tensor ``value``, called ``name`` (escaped as the text format escapes strings, so that
    any ONNX name reads back)."""
    tensor_type = value.type.tensor_type
    if tensor_type.elem_type not in TRITON_TYPES:
        raise SurgeonError(f"tensor {value.name!r} has a type Triton cannot serve "
                           f"({onnx.TensorProto.DataType.Name(tensor_type.elem_type)})")
    dims = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim]
    if batched:
        dims = dims[1:]
    # Triton needs at least one dim: a per-sample scalar is dims [1] reshaped to []
    shape = f"dims: [ {', '.join(map(str, dims))} ]" if dims else "dims: [ 1 ] reshape: { shape: [ ] }"
    return f'  {{ name: "{CEscape(name, as_utf8=True)}" data_type: {TRITON_TYPES[tensor_type.elem_type]} {shape} }}'


# --- publishing: every entry or none (surgeon.publish) ----------------------------------------------------------


def publish_versions(repository: Path, sources: list[Path], version: int = 0) -> list[Path]:
    """Add each model folder of ``sources`` to ``repository`` as a new version of the model of the same name.

    All or nothing (see ``surgeon.publish``): the version folder and ``config.pbtxt`` of every entry are staged
    in a hidden folder inside its model folder, then renamed into place. Returns the new version folders.
    """
    if not repository.is_dir():
        raise SurgeonError(f"triton.repository {repository}: no such folder")
    entries = [Entry(version_source=next(p for p in source.iterdir() if p.is_dir()), target=repository / source.name,
                     version=version, files=[source / "config.pbtxt"]) for source in sources]
    return publish_entries(entries, "triton.repository", repository)


# --- how to serve and measure it -----------------------------------------------------------------------------


def release_of(options: TritonOptions) -> str:
    return options.release or (DEFAULT_RELEASE if options.onnx else LAST_TENSORFLOW_RELEASE)


def loads_tensorflow(release: str) -> bool:
    """Whether the containers of Triton ``release`` hold the TensorFlow backend."""
    return tuple(map(int, release.split("."))) <= tuple(map(int, LAST_TENSORFLOW_RELEASE.split(".")))


def verified_batch(report: dict[str, Any], options: TritonOptions, batched: bool) -> int:
    """The largest batch size verification checked that the served config accepts (1 without verification)."""
    if not batched:
        return 1
    sizes = {row["batch"] for row in report.get("parity", []) if row["ok"]}
    return max((size for size in sizes if size <= options.max_batch_size), default=1)


def perf_analyzer_command(model: onnx.ModelProto, model_name: str, batch: int, kind: str = "onnx") -> list[str]:
    """perf_analyzer on ``model_name``, the entry of ``kind``, over GRPC: each input's shape without the batch dim;
    ``-b`` when batched."""
    batched = static_batch(model) is None
    command = ["perf_analyzer", "-m", model_name, "-u", GRPC_URL, "-i", "grpc"]
    names = input_names(model, kind)
    for value in real_inputs(model):
        dims = [dim.dim_value if dim.HasField("dim_value") else SYMBOLIC_DIM_SIZE
                for dim in value.type.tensor_type.shape.dim]
        dims = (dims[1:] if batched else dims) or [1]  # a per-sample scalar is dims [1] in the config
        command += ["--shape", f"{names[value.name]}:{','.join(map(str, dims))}"]
    if batched:
        command += ["-b", str(batch)]
    return command + ["--concurrency-range", CONCURRENCY]


def docker_command(repository: Path, release: str, load: list[str] | None, gpus: bool) -> list[str]:
    """``docker run`` of Triton ``release`` on ``repository``; ``load``: only these models (explicit control mode)."""
    command = ["docker", "run", "--rm"] + (["--gpus=all"] if gpus else [])
    for port in PORTS:
        command += ["-p", f"{port}:{port}"]
    command += ["-v", f"{repository.resolve()}:/models", IMAGE.format(release=release),
                "tritonserver", "--model-repository=/models"]
    if load:
        command += ["--model-control-mode=explicit", *(f"--load-model={name}" for name in load)]
    return command


def serving_commands(model: onnx.ModelProto, name: str, options: TritonOptions, repository: Path,
                     batch: int) -> dict[str, Any]:
    """The docker and perf_analyzer command lines for the entry that Triton ``release_of(options)`` loads."""
    release = release_of(options)
    target, kind = (f"{name}_onnx", "onnx") if options.onnx else (name, "savedmodel")
    # from 25.03 on the SavedModel entry cannot load, and a model failing at startup stops Triton: load the ONNX
    # entry alone
    load = None if loads_tensorflow(release) else [target]
    return {
        "release": release,
        "model": target,
        "docker": shlex.join(docker_command(repository, release, load, gpus=options.instance_kind != "cpu")),
        "perf_analyzer": shlex.join(perf_analyzer_command(model, target, batch, kind)),
    }


def commands_text(name: str, options: TritonOptions, commands: dict[str, Any]) -> list[str]:
    """The lines logged at the end of the run."""
    release, target = commands["release"], commands["model"]
    if not options.onnx:
        which = (f"serve and measure {name} with Triton {release} "
                 f"({LAST_TENSORFLOW_RELEASE} is the last release with the TensorFlow backend)")
    elif loads_tensorflow(release):
        which = f"serve {name} and {target} with Triton {release}, and measure {target}"
    else:
        which = (f"serve and measure {target} with Triton {release} "
                 f"(the SavedModel entry {name} needs {LAST_TENSORFLOW_RELEASE} or earlier)")
    return [f"triton: {which}:",
            f"  {commands['docker']}",
            f"  {commands['perf_analyzer']}",
            f"  (perf_analyzer is in {IMAGE.format(release=release)}-sdk)"]


@hookimpl
def surgeon_writers():
    return [Writer(name="triton", doc="OUT/triton: a Triton model repository: <name>_onnx for the ONNX Runtime "
                   "backend (every release; the only entry from 25.03 on) and <name>, the SavedModel, for the "
                   "TensorFlow backend (25.02 and earlier).",
                   options=TritonOptions, write=write, publish=publish, needs_saved_model=True)]
