"""preprocess_images: take raw uint8 images, normalize inside the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from surgeon import Finding, RewritePass, SurgeonError, hookimpl

NHWC_TO_NCHW = [0, 3, 1, 2]


@dataclass(frozen=True)
class Options:
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406], metadata={"doc": "per channel"})
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225], metadata={"doc": "per channel"})
    scale: float = field(default=1 / 255, metadata={"doc": "applied to the uint8 values before mean and std"})
    layout: Literal["NHWC", "NCHW"] = field(default="NHWC", metadata={"doc": "the layout clients send"})
    input: str = field(default="", metadata={"doc": "the image input (default: the first 4-D float input)"})
    name: str = field(default="images", metadata={"doc": "name of the new uint8 input"})


def image_input(graph: gs.Graph, options: Options) -> gs.Variable | None:
    """The float NCHW image input to replace, or None when there is none (already done)."""
    for tensor in graph.inputs:
        if options.input and tensor.name != options.input:
            continue
        if tensor.dtype == np.float32 and tensor.shape is not None and len(tensor.shape) == 4:
            return tensor
    if options.input and not any(tensor.name == options.input for tensor in graph.inputs):
        raise SurgeonError(f"input: the graph has no input {options.input!r}")
    return None


def channel_constant(name: str, values: list[float], channels: int) -> gs.Constant:
    if len(values) != channels:
        raise SurgeonError(f"{name}: {len(values)} values for {channels} channels")
    return gs.Constant(name=f"preprocess_{name}", values=np.asarray(values, np.float32).reshape(1, channels, 1, 1))


def bake_in(graph: gs.Graph, options: Options) -> dict | None:
    image = image_input(graph, options)
    if image is None:
        return None
    batch, channels, height, width = image.shape
    if not isinstance(channels, int):
        raise SurgeonError(f"input {image.name!r}: the channel dimension must be fixed, got {channels!r}")
    client_shape = [batch, height, width, channels] if options.layout == "NHWC" else [batch, channels, height, width]
    raw = gs.Variable(options.name, dtype=np.uint8, shape=client_shape)
    cast = gs.Variable("preprocess_float", dtype=np.float32)
    steps = [gs.Node("Cast", inputs=[raw], outputs=[cast], attrs={"to": 1})]
    current = cast
    if options.layout == "NHWC":
        transposed = gs.Variable("preprocess_nchw", dtype=np.float32)
        steps.append(gs.Node("Transpose", inputs=[current], outputs=[transposed], attrs={"perm": NHWC_TO_NCHW}))
        current = transposed
    scale = gs.Constant("preprocess_scale", np.asarray(options.scale, np.float32))
    shift = channel_constant("mean", options.mean, channels)
    spread = channel_constant("std", options.std, channels)
    for op, constant in (("Mul", scale), ("Sub", shift), ("Div", spread)):
        result = gs.Variable(f"preprocess_{op.lower()}", dtype=np.float32)
        steps.append(gs.Node(op, inputs=[current, constant], outputs=[result]))
        current = result
    steps[-1].outputs = [image]  # the old input is now computed from the raw image
    graph.nodes.extend(steps)
    graph.inputs = [raw if tensor is image else tensor for tensor in graph.inputs]
    return {"input": image.name, "new_input": raw.name, "layout": options.layout}


def original_inputs(inputs: list[np.ndarray], options: Options) -> list[np.ndarray]:
    """The normalized NCHW float arrays the model took before, from the raw images it takes now."""
    return [normalize(array, options) if array.dtype == np.uint8 and array.ndim == 4 else array for array in inputs]


def normalize(raw: np.ndarray, options: Options) -> np.ndarray:
    images = raw.astype(np.float32)
    if options.layout == "NHWC":
        images = images.transpose(NHWC_TO_NCHW)
    channels = images.shape[1]
    mean = np.asarray(options.mean, np.float32).reshape(1, channels, 1, 1)
    std = np.asarray(options.std, np.float32).reshape(1, channels, 1, 1)
    return (images * np.float32(options.scale) - mean) / std


def detect(graph: gs.Graph, options: Options) -> list[Finding]:
    image = image_input(graph, options)
    if image is None:
        return []
    return [Finding(where=f"input {image.name!r}", message="clients must send normalized float NCHW tensors; "
                    f"preprocess_images would take raw uint8 {options.layout} images instead")]


@hookimpl
def surgeon_passes():
    return [RewritePass(name="preprocess_images", doc="Take raw uint8 images; cast, normalize and transpose "
                        "inside the model.", options=Options, run=bake_in, detect=detect,
                        original_inputs=original_inputs)]
