"""torch: a PyTorch model to ONNX, the first script of the original recipe.

SOURCE names a factory that returns an ``nn.Module``: ``path/file.py:NAME``
or ``package.module:NAME`` (called with ``--set torch.kwargs=JSON``), or a
bundled example ``example:NAME`` (``--example NAME``). The weights come
from ``--weights CKPT`` (a state_dict, loaded with ``weights_only=True``,
see ``checkpoints``). The model is exported with ``torch.onnx.export`` at
the shapes given, as the recipe did, so the batch is fixed:
``dynamic_batch`` then makes it dynamic, or ``dynamic_batch_export=true``
asks the exporter for a dynamic batch axis (and when dynamic_batch refuses
the fixed export, the host asks for that export instead). Other axes are
exported dynamic when named in ``dynamic_axes`` (``input_ids:1:seq``: axis 1
of ``input_ids``, called ``seq``; check it at several sizes with
``--axis-sizes seq=8,16,32``). ``dynamo=true`` captures the
model with ``torch.export`` and translates it with torch's dynamo exporter
instead, which needs onnxscript and onnx-ir (``pip install 'surgeon[dynamo]'``)
and writes opset 18 unless torch manages the opset asked for; ``opset_compat``
brings such a model within onnx-tf's reach.

Input shapes (``--input-shape``, repeatable, or ``--set torch.input_shapes=A,B``)
are sizes separated by commas or ``x``, optionally after a dtype and a colon:
``1,3,224,224``, ``1x3x224x224``, ``int64:1,16``. With ``--set``, where commas
separate the shapes, write the sizes with ``x``.

The PyTorch model itself becomes the reference of the parity check.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from surgeon import Source, SurgeonError, UsageError, hookimpl
from surgeon.axes import BATCH_AXIS, DynamicAxis, parse_dynamic_axis
from surgeon.errors import describe

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import torch

    from surgeon.context import Context, Reference

log = logging.getLogger("surgeon")

# onnx-tf 1.10 has no handler for Squeeze-13 and Unsqueeze-13
DEFAULT_OPSET = 12
# what torch exports scaled_dot_product_attention, LayerNorm and GELU at; opset_compat lowers it
OPSET_WITH_COMPAT = 17
# what the dynamo exporter writes; its own version conversion rarely gets lower
DYNAMO_OPSET = 18
# what the dynamo exporter translates with (module: package); they need ml-dtypes >= 0.5, which TensorFlow 2.15
# cannot share
DYNAMO_PACKAGES = {"onnxscript": "onnxscript", "onnx_ir": "onnx-ir"}
EXAMPLE_PREFIX = "example:"
MODULE_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")


@dataclass(frozen=True)
class InputSpec:
    shape: tuple[int, ...]
    dtype: str = "float32"


def parse_input_shape(text: str) -> InputSpec:
    """``"1,3,224,224"``, ``"1x3x224x224"`` or ``"int64:1,16"`` -> an InputSpec."""
    dtype, _, sizes = text.rpartition(":")
    dtype = dtype.strip() or "float32"
    if dtype not in DTYPES:
        raise ValueError(f"input shape {text!r}: unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    try:
        shape = tuple(int(size) for size in re.split(r"[,x\s]+", sizes.strip()))
    except ValueError:
        shape = ()
    if not shape or min(shape) <= 0:
        raise ValueError(f"input shape {text!r}: expected positive sizes such as 1,3,224,224 or int64:1x16")
    return InputSpec(shape, dtype)


@dataclass(frozen=True)
class TorchOptions:
    weights: str | None = field(default=None, metadata={
        "doc": "checkpoint holding a state_dict (also --weights); none: the factory's own weights"})
    input_shapes: list[str] = field(default_factory=list, metadata={
        "doc": "one per forward() argument (also --input-shape): 1,3,224,224 or 1x3x224x224, dtype first "
        "if not float32: int64:1x16"})
    input_names: list[str] = field(default_factory=list, metadata={
        "doc": "ONNX input names (default: forward()'s parameter names)"})
    output_names: list[str] = field(default_factory=list, metadata={
        "doc": "ONNX output names (default: output, or output_0, output_1, ...)"})
    opset: int | None = field(default=None, metadata={
        "doc": f"ONNX opset (default {DEFAULT_OPSET}; when a pass that lowers opsets runs, such as opset_compat, "
               f"{OPSET_WITH_COMPAT}, or "
               f"{DYNAMO_OPSET} with dynamo: onnx-tf 1.10 converts Squeeze/Unsqueeze only below 13)"})
    dynamo: bool = field(default=False, metadata={
        "doc": "use the torch.export-based exporter (needs pip install 'surgeon[dynamo]'); "
               f"it writes opset {DYNAMO_OPSET}, which opset_compat lowers"})
    dynamic_batch_export: bool = field(default=False, metadata={
        "doc": "ask the exporter for a dynamic batch axis instead of exporting at the given shapes"})
    dynamic_axes: list[str] = field(default_factory=list, metadata={
        "doc": "other axes to export dynamic, as INPUT:AXIS:NAME (input_ids:1:seq,attention_mask:1:seq); "
               "verify them with --axis-sizes NAME=8,16,32"})
    kwargs: dict[str, Any] = field(default_factory=dict, metadata={
        "doc": 'keyword arguments of the factory, as JSON: {"num_classes": 6}'})

    def __post_init__(self) -> None:
        self.inputs()
        self.axes()
        if self.opset is not None and self.opset < 7:
            raise ValueError(f"opset {self.opset}: ONNX export needs opset 7 or later")

    def inputs(self) -> list[InputSpec]:
        return [parse_input_shape(text) for text in self.input_shapes]

    def axes(self) -> list[DynamicAxis]:
        return [parse_dynamic_axis(text) for text in self.dynamic_axes]


def accepts(spec: str) -> bool:
    target = spec.rpartition(":")[0]
    return (spec.startswith(EXAMPLE_PREFIX) or spec.endswith(".py") or target.endswith(".py")
            or bool(MODULE_SPEC.fullmatch(spec)))


def load(spec: str, options: TorchOptions, ctx: Context) -> onnx.ModelProto:
    """Build the model, load its weights, export it, and set it as the parity reference."""
    import torch

    from surgeon.onnx_io import load_model, opset_of
    from surgeon_plugins.sources.torch.checkpoints import load_weights

    if options.dynamo:
        require_dynamo_packages()
    asked_opset = options.opset
    if asked_opset is None:
        asked_opset = default_opset(options, ctx.newest_opset_in_reach())
        options = dataclasses.replace(options, opset=asked_opset)
    model, inputs = build(spec, options)
    if options.weights:
        load_weights(model, options.weights)
    model.eval()
    args = dummy_inputs(inputs)
    with torch.no_grad():
        try:
            outputs = flat_outputs(model(*args))
        except Exception as error:
            raise SurgeonError(f"{spec}: the model fails on inputs {describe_inputs(inputs)} ({describe(error)})",
                               hint="check --input-shape") from None
    input_names = names_for("input_names", options.input_names, default_input_names(model, len(args)))
    output_names = names_for("output_names", options.output_names,
                             ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))])
    axes = dynamic_axes_at(options.axes(), input_names, inputs)
    path = ctx.scratch / "torch_export.onnx"
    started = time.perf_counter()
    export(model, args, path, input_names, output_names, options, axes)
    seconds = time.perf_counter() - started
    exported = load_model(path)
    name_dynamic_axes(exported, {(input_names[index], axis): name for (index, axis), name in axes.items()})
    opset = opset_of(exported)
    ctx.record("export", {
        "exporter": "dynamo" if options.dynamo else "torchscript",
        "opset": opset,
        "inputs": [{"name": name, "shape": list(i.shape), "dtype": i.dtype} for name, i in zip(input_names, inputs)],
        "outputs": output_names,
        "dynamic_batch": options.dynamic_batch_export,
        "dynamic_axes": options.dynamic_axes,
        "weights": options.weights or "the factory's",
        "seconds": round(seconds, 3),
    })
    log.info("  exported at opset %d with %s batch in %.1fs", opset,
             "a dynamic" if options.dynamic_batch_export else "a fixed", seconds)
    if opset > asked_opset:
        log.warning("  the dynamo exporter wrote opset %d, not the %d asked for; a pass that lowers opsets "
                    "(opset_compat) brings such a model within onnx-tf's reach", opset, asked_opset)
    ctx.set_reference(reference(model), "the PyTorch model")
    return exported


def dynamic_axes_at(axes: list[DynamicAxis], input_names: list[str],
                    inputs: list[InputSpec]) -> dict[tuple[int, int], str]:
    """The named dynamic axes by (input index, axis), checked against the inputs."""
    at = {}
    for dynamic in axes:
        if dynamic.input not in input_names:
            raise SurgeonError(f"option torch.dynamic_axes: the model has no input {dynamic.input!r} "
                               f"(its inputs: {', '.join(input_names)})")
        index = input_names.index(dynamic.input)
        if dynamic.axis >= len(inputs[index].shape):
            raise SurgeonError(f"option torch.dynamic_axes: input {dynamic.input!r} has no axis {dynamic.axis} "
                               f"(shape {list(inputs[index].shape)})")
        at[index, dynamic.axis] = dynamic.name
    return at


def load_with_dynamic_batch(spec: str, options: TorchOptions, ctx: Context) -> onnx.ModelProto:
    """The model exported with a dynamic batch axis: what the host loads when the fixed export's batch cannot be
    made dynamic by the run's passes (HuggingFace text models gather their attention masks through a flattened
    batch, for one)."""
    return load(spec, dataclasses.replace(options, dynamic_batch_export=True), ctx)


def default_opset(options: TorchOptions, newest_in_reach: int | None) -> int:
    """One onnx-tf converts as it is, or a newer one when a pass of the run brings it within reach."""
    if newest_in_reach is None:
        return DEFAULT_OPSET
    return min(DYNAMO_OPSET if options.dynamo else OPSET_WITH_COMPAT, newest_in_reach)


def require_dynamo_packages() -> None:
    """Fail with what to install when the dynamo exporter's packages are missing (before the model is built)."""
    missing = [package for module, package in DYNAMO_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise SurgeonError(
            f"option torch.dynamo: the dynamo exporter needs onnxscript and onnx-ir ({' and '.join(missing)} "
            "not installed)",
            hint="pip install 'surgeon[dynamo]'; they need ml-dtypes >= 0.5 and so TensorFlow >= 2.16 (the default "
                 "stack of constraints.txt). With TensorFlow 2.15, which pins ml-dtypes 0.3, leave torch.dynamo off")


def build(spec: str, options: TorchOptions) -> tuple[torch.nn.Module, list[InputSpec]]:
    """The model named by ``spec``, and its input specs (an example's default when none are given)."""
    import torch

    inputs = options.inputs()
    if spec.startswith(EXAMPLE_PREFIX):
        from surgeon_plugins.examples import get

        example = get(spec[len(EXAMPLE_PREFIX):])
        inputs = inputs or [InputSpec(example.input_shape)]
        kwargs = {"input_shape": inputs[0].shape, **options.kwargs}
        factory = example.factory
    else:
        if not inputs:
            raise UsageError(f"{spec}: a PyTorch model needs its input shapes",
                             hint="add --input-shape 1,3,224,224 (once per forward() argument)")
        kwargs = dict(options.kwargs)
        factory = find_factory(spec)
    try:
        model = factory(**kwargs)
    except Exception as error:
        raise SurgeonError(f"{spec}: the factory failed with kwargs {kwargs} ({describe(error)})") from None
    if not isinstance(model, torch.nn.Module):
        raise SurgeonError(f"{spec}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model, inputs


def find_factory(spec: str) -> Callable[..., Any]:
    """The callable named by ``file.py:NAME`` or ``package.module:NAME``."""
    if spec.endswith(".py"):
        location, name = spec, ""
    else:
        location, _, name = spec.rpartition(":")
    if location.endswith(".py"):
        with importable_from(Path(location).parent):
            module = import_file(Path(location))
    else:
        try:
            module = importlib.import_module(location)
        except Exception as error:
            raise SurgeonError(f"{spec}: cannot import {location} ({describe(error)})") from None
    target: Any = module
    for part in name.split(".") if name else []:
        target = getattr(target, part, None)
    if not name or not callable(target):
        found = ", ".join(candidates(module)) or "none"
        raise UsageError(f"{spec}: name a factory in {location} as {location}:NAME "
                         f"(callables defined there: {found})")
    return target


def import_file(path: Path) -> ModuleType:
    from surgeon.discovery import import_file as import_python_file

    if not path.is_file():
        raise SurgeonError(f"{path}: no such file")
    try:
        return import_python_file(path, "surgeon_model")
    except Exception as error:
        raise SurgeonError(f"{path}: importing it failed ({describe(error)})") from None


@contextmanager
def importable_from(folder: Path) -> Iterator[None]:
    """Let a model file import its neighbours, as the recipe's ``sys.path.append`` did."""
    entry = str(folder.resolve())
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        sys.path.remove(entry)


def candidates(module: ModuleType) -> list[str]:
    return [name for name, value in vars(module).items()
            if callable(value) and not name.startswith("_") and getattr(value, "__module__", None) == module.__name__]


def dummy_inputs(inputs: list[InputSpec]) -> list[torch.Tensor]:
    """Seeded example inputs: normal floats, zero integers (valid indices for any embedding)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    tensors = []
    for spec in inputs:
        dtype = getattr(torch, spec.dtype)
        if dtype.is_floating_point:
            tensors.append(torch.randn(spec.shape, generator=generator).to(dtype))
        else:
            tensors.append(torch.zeros(spec.shape, dtype=dtype))
    return tensors


def describe_inputs(inputs: list[InputSpec]) -> str:
    return ", ".join(f"{i.dtype}[{','.join(map(str, i.shape))}]" for i in inputs)


def default_input_names(model: torch.nn.Module, count: int) -> list[str]:
    """forward()'s positional parameter names, or input_0, input_1, ... when it takes *args."""
    parameters = [p.name for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(parameters) >= count:
        return parameters[:count]
    return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]


def names_for(option: str, given: list[str], default: list[str]) -> list[str]:
    if not given:
        return default
    if len(given) != len(default):
        raise UsageError(f"option torch.{option}: {len(given)} names given for {len(default)} "
                         f"{option.split('_')[0]}s ({', '.join(given)})")
    return given


def flat_outputs(value: Any) -> list[torch.Tensor]:
    """The output tensors in the order the exporter flattens them (tuples, lists, dict values)."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in flat_outputs(item)]
    raise SurgeonError(f"the model returns a {type(value).__name__}; ONNX export needs tensors")


def export(model: torch.nn.Module, args: list[torch.Tensor], path: Path, input_names: list[str],
           output_names: list[str], options: TorchOptions, axes: dict[tuple[int, int], str]) -> None:
    """Write the model's ONNX to ``path``, with the batch dynamic if asked and the ``axes`` (by input index and
    axis) dynamic; torch's warnings go to the debug log (--verbose)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if options.dynamo:
            export_with_dynamo(model, args, path, input_names, output_names, options, axes)
        else:
            export_with_torchscript(model, args, path, input_names, output_names, options, axes)
    for warning in caught:
        log.debug("torch.onnx.export: %s", warning.message)


def export_with_torchscript(model: torch.nn.Module, args: list[torch.Tensor], path: Path, input_names: list[str],
                            output_names: list[str], options: TorchOptions,
                            axes: dict[tuple[int, int], str]) -> None:
    import torch

    dynamic_axes: dict[str, dict[int, str]] = ({name: {0: BATCH_AXIS} for name in [*input_names, *output_names]}
                                               if options.dynamic_batch_export else {})
    for (index, axis), name in axes.items():
        dynamic_axes.setdefault(input_names[index], {})[axis] = name
    try:
        torch.onnx.export(model, tuple(args), str(path), dynamo=False, opset_version=options.opset,
                          input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes or None)
    except Exception as error:
        raise SurgeonError(f"torch.onnx.export failed at opset {options.opset} ({describe(error)})",
                           hint="another --set torch.opset=N may help") from None


def export_with_dynamo(model: torch.nn.Module, args: list[torch.Tensor], path: Path, input_names: list[str],
                       output_names: list[str], options: TorchOptions,
                       axes: dict[tuple[int, int], str]) -> None:
    """Capture the model with torch.export, then translate the program with the dynamo exporter."""
    import torch

    program = capture(model, args, options.dynamic_batch_export, axes)
    with torch_onnx_log_at_debug():
        try:
            torch.onnx.export(program, (), str(path), dynamo=True, opset_version=options.opset, verbose=False,
                              input_names=input_names, output_names=output_names, external_data=False)
        except Exception as error:
            raise SurgeonError(f"the dynamo exporter failed at opset {options.opset} ({describe(error)})",
                               hint="--verbose shows its log; leaving torch.dynamo off uses the TorchScript "
                                    "exporter") from None


def capture(model: torch.nn.Module, args: list[torch.Tensor], dynamic_batch: bool,
            axes: dict[tuple[int, int], str]) -> torch.export.ExportedProgram:
    """``torch.export`` the model; a dynamic batch is traced at batch 2 at least, since torch specializes
    sizes 0 and 1. The named ``axes`` are left for torch to find their range (``Dim.AUTO``)."""
    import torch

    dynamic_shapes = None
    if dynamic_batch or axes:
        shapes: list[dict[int, Any]] = [{} for _ in args]
        if dynamic_batch:
            args = [tensor.expand(max(2, tensor.shape[0]), *tensor.shape[1:]).contiguous() for tensor in args]
            batch = torch.export.Dim(BATCH_AXIS)
            for shape in shapes:
                shape[0] = batch
        for index, axis in axes:
            shapes[index][axis] = torch.export.Dim.AUTO
        dynamic_shapes = tuple(shape or None for shape in shapes)
    try:
        return torch.export.export(model, tuple(args), dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as error:
        hint = ("without torch.dynamic_batch_export the batch is captured fixed, and dynamic_batch frees it"
                if dynamic_batch else "leaving torch.dynamo off uses the TorchScript exporter")
        raise SurgeonError(f"torch.export cannot capture the model ({describe(error)})", hint=hint) from None


@contextmanager
def torch_onnx_log_at_debug() -> Iterator[None]:
    """Send the log of ``torch.onnx`` (such as "torchvision is not installed") to surgeon's debug log, shown
    with --verbose, rather than to the terminal."""
    torch_onnx_log = logging.getLogger("torch.onnx")
    handlers, propagate = torch_onnx_log.handlers, torch_onnx_log.propagate
    torch_onnx_log.handlers, torch_onnx_log.propagate = [DebugLogRelay()], False
    try:
        yield
    finally:
        torch_onnx_log.handlers, torch_onnx_log.propagate = handlers, propagate


class DebugLogRelay(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        log.debug("%s: %s", record.name, record.getMessage())


def name_dynamic_axes(model: onnx.ModelProto, axes: dict[tuple[str, int], str]) -> None:
    """Name the symbolic dims of the export as asked, in the graph's inputs, outputs and value_info: the first
    input's batch ``batch``, and each of ``axes`` (by input name and axis) its name (the dynamo exporter names
    them after its symbols, e.g. ``s31``). An axis the exporter left fixed is an error: the model computes with
    its size as a constant."""
    graph = model.graph
    inputs = {value.name: value for value in graph.input}
    wanted = {**({(graph.input[0].name, 0): BATCH_AXIS} if graph.input else {}), **axes}
    renames: dict[str, str] = {}
    for (input_name, axis), name in wanted.items():
        dims = inputs[input_name].type.tensor_type.shape.dim if input_name in inputs else []
        if axis >= len(dims):
            continue
        symbol = dims[axis].dim_param
        if symbol and renames.get(symbol, name) != name:
            raise SurgeonError(f"option torch.dynamic_axes: the exporter made {renames[symbol]!r} and {name!r} one "
                               f"dimension ({symbol}): the model requires them to be equal",
                               hint="give them one name")
        if symbol:
            renames[symbol] = name
        elif (input_name, axis) in axes:
            raise SurgeonError(f"option torch.dynamic_axes: the exporter fixed axis {axis} of input {input_name!r} "
                               f"at {dims[axis].dim_value}: the model computes with that size as a constant",
                               hint="docs/dynamic_axes.md says what keeps an axis dynamic")
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]


def reference(model: torch.nn.Module) -> Reference:
    """The PyTorch model as a function of numpy arrays (in input order): the parity check's reference."""
    import torch

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            outputs = model(*(torch.tensor(array) for array in arrays))
        return [tensor.numpy() for tensor in flat_outputs(outputs)]

    return run


@hookimpl
def surgeon_sources():
    return [Source(name="torch", doc="Export a PyTorch model (file.py:factory, package.module:factory or "
                   "example:NAME) to ONNX; the model is the parity reference.",
                   options=TorchOptions, accepts=accepts, load=load,
                   load_with_dynamic_batch=load_with_dynamic_batch)]
