"""gru_fix: PyTorch's GRU, which onnx-tf cannot convert, unrolled into operators it can.

PyTorch computes the GRU candidate state as ``tanh(W x + b_W + r * (R h +
b_R))``: ONNX's ``linear_before_reset=1``. Every ``nn.GRU`` exports so, and
onnx-tf 1.10 refuses it ("GRU with linear_before_reset is not supported in
Tensorflow"), whatever the opset.

Over a sequence of known length this pass writes the recurrence out step
by step: the input projections of all steps as one MatMul per gate, then per
step two MatMuls, Sigmoid, Tanh and elementwise arithmetic, each direction
in its own order (reverse reads the sequence backwards, as ONNX does). The
outputs keep their names, shapes and layout. Only operators whose meaning
every opset since 7 shares are used (MatMul, Gather, Reshape, Concat,
Transpose, arithmetic), so the model's opset stays.

Batch-first GRUs (``layout=1``) are unrolled between Transposes. Left
alone, and reported: a sequence of unknown length or longer than
``max_steps``, ``sequence_lens``, ``clip``, activations other than the
default Sigmoid and Tanh, weights computed at run time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from surgeon import Finding, Hazard, RewritePass, SurgeonError, hookimpl
from surgeon.graph import Builder, Unfixable, constant_value, describe, is_empty, optional_input
from surgeon.shapes import inferred_types

log = logging.getLogger("surgeon")

DEFAULT_ACTIVATIONS = ("Sigmoid", "Tanh")


@dataclass(frozen=True)
class GruFixOptions:
    scope: Literal["hazards", "all"] = field(default="hazards", metadata={
        "doc": "hazards: the GRUs onnx-tf 1.10 refuses (linear_before_reset=1, PyTorch's); all: every GRU"})
    max_steps: int = field(default=512, metadata={
        "doc": "the longest sequence to unroll (each step adds about 16 nodes per direction)"})

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")


@dataclass(frozen=True)
class Gru:
    """A GRU node with what unrolling it needs: per direction, the weights of the z, r and h gates."""

    node: gs.Node
    steps: int
    hidden: int
    reverse_only: bool
    batch_first: bool  # layout=1: x [batch, steps, input], y [batch, steps, directions, hidden], y_h [batch, ...]
    linear_before_reset: bool
    weights: np.ndarray  # [directions, 3 * hidden, input]
    recurrence: np.ndarray  # [directions, 3 * hidden, hidden]
    bias: np.ndarray  # [directions, 6 * hidden]: input then recurrence biases

    @property
    def directions(self) -> int:
        return self.weights.shape[0]


def constant_input(node: gs.Node, index: int) -> np.ndarray | None:
    """The value of input ``index``, a constant; None when the node leaves it out."""
    tensor = optional_input(node, index)
    if tensor is None:
        return None
    value = constant_value(tensor)
    if value is None:
        raise Unfixable(f"its input {tensor.name!r} is computed at run time")
    return value


def read(node: gs.Node, dims: Sequence | None, max_steps: int) -> Gru:
    """The GRU ``node``, whose input has ``dims`` (None: unknown)."""
    attrs = node.attrs
    if attrs.get("clip") is not None:
        raise Unfixable("it clips (clip attribute)")
    activations = tuple(name.capitalize() for name in attrs.get("activations", []))
    if activations and set(zip(activations[::2], activations[1::2])) != {DEFAULT_ACTIVATIONS}:
        raise Unfixable(f"its activations {list(activations)} are not the default Sigmoid, Tanh")
    if optional_input(node, 4) is not None:
        raise Unfixable("it takes sequence_lens")
    batch_first = bool(attrs.get("layout", 0))
    steps = dims[int(batch_first)] if dims is not None and len(dims) == 3 else None
    if not isinstance(steps, int):
        raise Unfixable("its sequence length is not known")
    if steps > max_steps:
        raise Unfixable(f"its sequence has {steps} steps, over max_steps={max_steps}")
    input_weights, recurrence = constant_input(node, 1), constant_input(node, 2)
    if input_weights is None or recurrence is None:  # W and R are required inputs of an ONNX GRU
        raise SurgeonError(f"{describe(node)} lacks its W or R input, which every GRU has")
    hidden = recurrence.shape[-1]
    bias = constant_input(node, 3)
    if bias is None:
        bias = np.zeros((input_weights.shape[0], 6 * hidden), input_weights.dtype)
    return Gru(node=node, steps=steps, hidden=hidden, reverse_only=attrs.get("direction") == "reverse",
               batch_first=batch_first, linear_before_reset=bool(attrs.get("linear_before_reset", 0)),
               weights=input_weights, recurrence=recurrence, bias=bias)


def unroll(graph: gs.Graph, gru: Gru) -> None:
    """Replace the GRU node by its recurrence written out step by step."""
    node = gru.node
    build = Builder(graph, prefix=f"{node.name or next(tensor.name for tensor in node.outputs if tensor.name)}/")
    x = node.inputs[0]
    initial = optional_input(node, 5)
    y, y_h = (None if is_empty(tensor) else tensor for tensor in [*node.outputs, None, None][:2])
    node.inputs.clear()
    node.outputs.clear()
    graph.nodes.remove(node)
    if gru.batch_first:  # unrolled in ONNX's default layout, between Transposes
        x = build.op("Transpose", [x], "x_steps_first", perm=[1, 0, 2])
        if initial is not None:
            initial = build.op("Transpose", [initial], "h0_directions_first", perm=[1, 0, 2])
        if y is not None:
            y = transposed_from(build, y, "y_steps_first", [2, 0, 1, 3])
        if y_h is not None:
            y_h = transposed_from(build, y_h, "y_h_directions_first", [1, 0, 2])
    states = [unroll_direction(build, gru, direction, x, initial) for direction in range(gru.directions)]
    hidden = gru.hidden
    if y is not None:  # [steps, directions, batch, hidden]
        to_rows = build.ints("rows_shape", [1, -1, hidden])
        to_step = build.ints("step_shape", [1, gru.directions, -1, hidden])
        steps = []
        for t in range(gru.steps):
            at_t = [of_direction[t] for of_direction in states]
            if len(at_t) > 1:
                rows = [build.op("Reshape", [state, to_rows], f"t{t}/d{d}_rows") for d, state in enumerate(at_t)]
                at_t = [build.op("Concat", rows, f"t{t}/directions", axis=0)]
            steps.append(build.op("Reshape", [at_t[0], to_step], f"t{t}/y"))
        build.op("Concat", steps, "y", output=y, axis=0)
    if y_h is not None:  # [directions, batch, hidden]: each direction's state after its last step
        to_rows = build.ints("last_shape", [1, -1, hidden])
        last = [of_direction[last_step(gru, d)] for d, of_direction in enumerate(states)]
        rows = [build.op("Reshape", [state, to_rows], f"d{d}/y_h") for d, state in enumerate(last)]
        build.op("Concat", rows, "y_h", output=y_h, axis=0)


def transposed_from(build: Builder, output: gs.Variable, what: str, perm: list[int]) -> gs.Variable:
    """A new tensor that becomes ``output`` through a Transpose by ``perm``."""
    source = gs.Variable(build.name(what))
    build.op("Transpose", [source], what, output=output, perm=perm)
    return source


def last_step(gru: Gru, direction: int) -> int:
    """The time index a direction reaches last: the end forwards, 0 in reverse."""
    return 0 if gru.reverse_only or direction == 1 else gru.steps - 1


def unroll_direction(build: Builder, gru: Gru, direction: int, x: gs.Tensor,
                     initial: gs.Tensor | None) -> list[gs.Variable]:
    """The hidden state after each time index, [batch, hidden] each, in time order."""
    tag, hidden = f"d{direction}", gru.hidden
    w, r, b = gru.weights[direction], gru.recurrence[direction], gru.bias[direction]
    projected, recurrent = {}, {}
    for index, gate in enumerate("zrh"):
        rows = slice(index * hidden, (index + 1) * hidden)
        # R's biases of z and r join the input projection; R's bias of h stays inside the reset
        bias = b[rows] + (b[3 * hidden:][rows] if gate != "h" else 0)
        product = build.op("MatMul", [x, build.const(f"{tag}/W{gate}", w[rows].T)], f"{tag}/x{gate}")
        projected[gate] = build.op("Add", [product, build.const(f"{tag}/b{gate}", bias)], f"{tag}/x{gate}_b")
        recurrent[gate] = build.const(f"{tag}/R{gate}", r[rows].T)
    recurrent_h_bias = build.const(f"{tag}/Rbh", b[5 * hidden:])
    state = None
    if initial is not None:
        state = build.op("Gather", [initial, build.ints(f"{tag}/index", direction)],
                         f"{tag}/h0", axis=0)
    states: dict[int, gs.Variable] = {}
    reverse = gru.reverse_only or direction == 1
    for t in range(gru.steps - 1, -1, -1) if reverse else range(gru.steps):
        at = build.ints(f"{tag}/t{t}", t)
        inputs = {gate: build.op("Gather", [projected[gate], at], f"{tag}/t{t}/x{gate}", axis=0) for gate in "zrh"}
        state = step(build, f"{tag}/t{t}", inputs, recurrent, recurrent_h_bias, state, gru.linear_before_reset)
        states[t] = state
    return [states[t] for t in range(gru.steps)]


def step(build: Builder, tag: str, x: dict[str, gs.Tensor], recurrent: dict[str, gs.Constant],
         recurrent_h_bias: gs.Constant, state: gs.Tensor | None, linear_before_reset: bool) -> gs.Variable:
    """H_t = (1 - z) * h~ + z * H_{t-1} from the gates' input projections at t; H_{t-1} None means 0."""
    def gate(name: str) -> gs.Variable:
        total = x[name] if state is None else build.op(
            "Add", [x[name], build.op("MatMul", [state, recurrent[name]], f"{tag}/h{name}")], f"{tag}/{name}_sum")
        return build.op("Sigmoid", [total], f"{tag}/{name}")

    z, r = gate("z"), gate("r")
    if state is None:  # R h is 0
        recurrent_h = build.op("Mul", [r, recurrent_h_bias], f"{tag}/r_Rbh") if linear_before_reset \
            else recurrent_h_bias
    elif linear_before_reset:  # r * (R h + Rb)
        hidden_h = build.op("Add", [build.op("MatMul", [state, recurrent["h"]], f"{tag}/hh"), recurrent_h_bias],
                            f"{tag}/hh_b")
        recurrent_h = build.op("Mul", [r, hidden_h], f"{tag}/r_hh")
    else:  # R (r * h) + Rb
        reset = build.op("Mul", [r, state], f"{tag}/r_state")
        recurrent_h = build.op("Add", [build.op("MatMul", [reset, recurrent["h"]], f"{tag}/hh"), recurrent_h_bias],
                               f"{tag}/hh_b")
    candidate = build.op("Tanh", [build.op("Add", [x["h"], recurrent_h], f"{tag}/h_sum")], f"{tag}/h")
    if state is None:  # (1 - z) * h~
        return build.op("Sub", [candidate, build.op("Mul", [z, candidate], f"{tag}/z_h")], f"{tag}/state")
    kept = build.op("Mul", [z, build.op("Sub", [state, candidate], f"{tag}/delta")], f"{tag}/kept")
    return build.op("Add", [candidate, kept], f"{tag}/state")  # h~ + z * (H - h~)


def is_hazard(node: gs.Node) -> bool:
    return node.op == "GRU" and bool(node.attrs.get("linear_before_reset", 0))


def plan(graph: gs.Graph, options: GruFixOptions) -> list[tuple[gs.Node, Gru | None, str | None]]:
    """(node, what unrolling it needs, why it cannot be) for each GRU the pass is for."""
    nodes = [node for node in graph.nodes if node.op == "GRU" and (options.scope == "all" or is_hazard(node))]
    inferred = {}
    if any(node.inputs[0].shape is None for node in nodes):  # exporters often leave intermediate shapes out
        inferred = {name: dims for name, (_, dims) in inferred_types(graph).items()}
    chosen: list[tuple[gs.Node, Gru | None, str | None]] = []
    for node in nodes:
        x = node.inputs[0]
        try:
            chosen.append((node, read(node, x.shape if x.shape is not None else inferred.get(x.name),
                                      options.max_steps), None))
        except Unfixable as why:
            chosen.append((node, None, str(why)))
    return chosen


def detect(graph: gs.Graph, options: GruFixOptions) -> list[Finding]:
    found = []
    for node, _, blocked in plan(graph, options):
        why = ("linear_before_reset=1 (PyTorch's GRU): onnx-tf 1.10 cannot convert it" if is_hazard(node)
               else "a GRU (scope=all)")
        found.append(Finding(where=describe(node), nodes=(node.name,), fixable=not blocked,
                             message=why + (f"; gru_fix cannot unroll it: {blocked}" if blocked else "")))
    return found


def fix(graph: gs.Graph, options: GruFixOptions) -> dict | None:
    unrolled = {}
    for node, gru, blocked in plan(graph, options):
        if gru is None:
            log.warning("gru_fix: %s left as it is: %s", describe(node), blocked)
            continue
        unrolled[describe(node)] = f"{gru.steps} steps x {gru.directions} direction(s)"
        unroll(graph, gru)
    return {"unrolled": unrolled} if unrolled else None


@hookimpl
def surgeon_passes():
    return [RewritePass(name="gru_fix", doc="PyTorch's GRU (linear_before_reset=1), which onnx-tf refuses, unrolled "
                        "over its known sequence length into MatMul, Sigmoid and Tanh.",
                        options=GruFixOptions, run=fix, detect=detect,
                        fixes=frozenset({Hazard.UNCONVERTIBLE_NODE}))]
