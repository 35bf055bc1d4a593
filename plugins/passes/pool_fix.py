"""pool_fix: pooling that onnx-tf converts natively and exactly.

onnx-tf 1.10 runs some pooling as ``tf.numpy_function`` (a PyFunc: the
SavedModel saves, but no fresh process can call it) and computes some
wrongly. From its ``pool_mixin.py`` and ``dilated_pooling.py``, checked
against it on random pooling nodes (tests/test_pool_fix_backend.py):

- AveragePool with count_include_pad=0 and ceil_mode=1, SAME_LOWER, or
  non-zero explicit pads: PyFunc. Explicit pads escape only when they
  equal SAME_UPPER on a fully defined input shape, so a dynamic batch brings
  the PyFunc back.
- AveragePool with count_include_pad=1 and ceil_mode=1: the ceil-mode
  extension is counted in the divisor.
- ceil_mode=1 where the last window would start in the end padding: ONNX
  drops that window, onnx-tf keeps it.
- explicit pads on a fully defined shape are compared with SAME_UPPER pads
  computed from the dims one place off (C, H instead of H, W); when they
  match there but not on the real dims, onnx-tf pads as SAME_UPPER would.

``detect`` reports exactly these nodes. An AveragePool whose pads are those
of SAME_UPPER becomes auto_pad=SAME_UPPER, which onnx-tf pools natively at
any batch size. Any other is rewritten into an explicit Pad (the lowest value of the dtype for MaxPool, 0 otherwise) and
the same pooling without padding in floor mode, which onnx-tf converts
natively. Ceil mode is floor mode over ``min(end_pad + stride - 1, span -
1)`` end padding (span: the dilated kernel): that keeps exactly the windows
ONNX keeps, for every input size. An average is then rescaled to the ONNX
and PyTorch divisor (the positions inside the input, or inside the
explicitly padded input with count_include_pad=1): by a constant when the
spatial dims are static, else by the same pooling of a padded ones mask.
Input shapes the graph does not carry come from ONNX shape inference.

Left alone, and reported: nodes on which ONNX Runtime and the ONNX spec
disagree (VALID with ceil_mode, SAME_* with dilations or a window narrower
than the stride), models below opset 11, inputs of unknown dtype.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from surgeon import Finding, Hazard, RewritePass, SurgeonError, hookimpl
from surgeon.graph import Builder, describe

log = logging.getLogger("surgeon")

POOLS = ("MaxPool", "AveragePool", "LpPool")
MIN_OPSET = 11  # Pad takes its pads as an input from opset 11 on
BECOMES_PYFUNC = "becomes a PyFunc (a Python callback that no server can run)"


@dataclass(frozen=True)
class PoolFixOptions:
    scope: Literal["hazards", "all"] = field(default="hazards", metadata={
        "doc": "hazards: only pooling that onnx-tf 1.10 would run as a PyFunc or compute wrongly; "
               "all: every padded or ceil-mode pooling"})


@dataclass(frozen=True)
class Pool:
    """A pooling node with its attributes resolved per spatial axis."""

    node: gs.Node
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    auto_pad: str
    pads: tuple[int, ...]  # the pads attribute: begins, then ends
    ceil: bool
    count_pad: bool
    shape: tuple | None  # the input shape as far as known: ints, names, None
    dtype: np.dtype | None

    @property
    def rank(self) -> int:
        return len(self.kernel)

    @property
    def spans(self) -> list[int]:
        """The extent of each window: (kernel - 1) * dilation + 1."""
        return [(k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations)]

    @property
    def dims(self) -> list[int | None]:
        """The spatial dims, None where not static."""
        if self.shape is None or len(self.shape) != self.rank + 2:
            return [None] * self.rank
        return [dim if isinstance(dim, int) else None for dim in self.shape[2:]]

    @property
    def static(self) -> bool:
        """The whole input shape is known: onnx-tf's condition for trying SAME_UPPER on explicit pads."""
        return self.shape is not None and len(self.shape) == self.rank + 2 and all(
            isinstance(dim, int) for dim in self.shape)

    @property
    def same(self) -> bool:
        return self.auto_pad.startswith("SAME")

    def explicit_pads(self) -> tuple[list[int], list[int]] | None:
        """(begins, ends) as ONNX pads the input before pooling; None for SAME_* on dims not known."""
        if self.auto_pad == "VALID":
            return [0] * self.rank, [0] * self.rank
        if self.same:
            return same_pads(self.dims, self, lower=self.auto_pad == "SAME_LOWER")
        return list(self.pads[: self.rank]), list(self.pads[self.rank:])

    def padded_ends(self, ends: Sequence[int]) -> list[int]:
        """End pads for floor mode that keep exactly the windows ONNX keeps.

        In ceil mode ONNX keeps window j (starting at j * stride in the padded
        input) while j * stride <= dim + begin + end - span + stride - 1 and it
        starts before the end padding, j * stride <= dim + begin - 1. Floor
        mode over end padding e keeps it while j * stride <= dim + begin + e -
        span. They agree for e = min(end + stride - 1, span - 1), whatever the
        dim. With auto_pad SAME_* or VALID ceil mode changes nothing (ONNX spec).
        """
        if not self.ceil or self.auto_pad != "NOTSET":
            return list(ends)
        return [min(end + stride - 1, span - 1) for end, stride, span in zip(ends, self.strides, self.spans)]


def same_total(dim, stride: int, span: int) -> int | None:
    """The total SAME_* padding of one axis (ceil(dim / stride) windows); None when it depends on an unknown dim."""
    if stride == 1:
        return span - 1
    return max(span - 1 - (dim - 1) % stride, 0) if isinstance(dim, int) else None


def same_pads(dims: Sequence, pool: Pool, lower: bool = False) -> tuple[list[int], list[int]] | None:
    """(begins, ends) of SAME_UPPER, or SAME_LOWER, padding on ``dims``; None when they depend on unknown dims."""
    maybe_totals = [same_total(dim, stride, span) for dim, stride, span in zip(dims, pool.strides, pool.spans)]
    totals = [total for total in maybe_totals if total is not None]
    if len(totals) != len(maybe_totals):
        return None
    begins = [(total + lower) // 2 for total in totals]
    return begins, [total - begin for total, begin in zip(totals, begins)]


def known(pads: tuple[list[int], list[int]] | None, pool: Pool) -> tuple[list[int], list[int]]:
    """``pads`` (from ``explicit_pads`` or ``same_pads``) where the caller knows they do not depend on unknown dims:
    explicit pads, VALID, or a static input shape."""
    if pads is None:
        raise SurgeonError(f"{describe(pool.node)}: its padding depends on input dims that are not known")
    return pads


def read(node: gs.Node, inferred: dict[str, tuple]) -> Pool | None:
    """The pooling node as a :class:`Pool`; None for other nodes and MaxPool with Indices.

    ``inferred`` maps tensor names to (shape, dtype) for tensors whose shape the graph does not carry.
    """
    if not is_pool(node):
        return None
    kernel = tuple(node.attrs["kernel_shape"])
    rank = len(kernel)
    x = node.inputs[0]
    shape, dtype = (x.shape, x.dtype) if x.shape is not None else inferred.get(x.name, (None, x.dtype))
    dtype = next((t for t in (dtype, node.outputs[0].dtype) if t is not None), None)
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    return Pool(
        node=node,
        kernel=kernel,
        strides=tuple(node.attrs.get("strides", [1] * rank)),
        dilations=tuple(node.attrs.get("dilations", [1] * rank)),
        auto_pad=auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad,
        pads=tuple(node.attrs.get("pads", [0] * 2 * rank)),
        ceil=bool(node.attrs.get("ceil_mode", 0)),
        count_pad=bool(node.attrs.get("count_include_pad", 0)),
        shape=tuple(shape) if shape is not None else None,
        dtype=np.dtype(dtype) if dtype is not None else None,
    )


def is_pool(node: gs.Node) -> bool:
    return (node.op in POOLS and node.domain in (None, "", "ai.onnx") and len(node.outputs) == 1
            and bool(node.inputs) and bool(node.attrs.get("kernel_shape")))


def inferred_shapes(graph: gs.Graph, nodes: Sequence[gs.Node]) -> dict[str, tuple]:
    """Shapes and dtypes from ONNX shape inference for the inputs of ``nodes`` the graph has no shape for.

    Exporters often leave intermediate shapes out; knowing them tells a
    static input (which onnx-tf pools natively in more cases) and allows a
    constant divisor. Inference runs only when needed.
    """
    names = {node.inputs[0].name for node in nodes if node.inputs[0].shape is None}
    if not names:
        return {}
    import onnx

    from surgeon.shapes import inferred_types

    return {name: (dims, onnx.helper.tensor_dtype_to_np_dtype(elem_type) if elem_type else None)
            for name, (elem_type, dims) in inferred_types(graph).items() if name in names and dims is not None}


def onnx_tf_trouble(pool: Pool) -> str | None:
    """Why onnx-tf 1.10 would run ``pool`` as a PyFunc or compute it wrongly; None when it converts it exactly."""
    op, mode = pool.node.op, pool.auto_pad
    shape = pool.shape  # not None when static
    if mode == "NOTSET" and any(pool.pads) and pool.static and shape is not None:
        if pool.explicit_pads() == same_pads(shape[1: pool.rank + 1], pool):  # the dims onnx-tf 1.10 passes
            if pads_differ_in_effect(pool, known(same_pads(shape[2:], pool), pool)):
                return ("onnx-tf takes its pads for SAME_UPPER, computed from the wrong dims, "
                        "and pads differently: wrong numbers")
            mode = "SAME_UPPER"
    if op == "AveragePool" and not pool.count_pad:
        if pool.ceil:
            return f"AveragePool with count_include_pad=0 and ceil_mode=1 {BECOMES_PYFUNC}"
        if mode == "SAME_LOWER":
            return f"AveragePool with count_include_pad=0 and SAME_LOWER {BECOMES_PYFUNC}"
        if mode == "NOTSET" and any(pool.pads):
            if pool.explicit_pads() == same_pads(pool.dims, pool):
                return (f"AveragePool with count_include_pad=0 and pads {BECOMES_PYFUNC}: they pass as SAME_UPPER "
                        "only on a fully defined input shape, which a dynamic batch is not")
            return f"AveragePool with count_include_pad=0 and non-zero pads {BECOMES_PYFUNC}"
        return None
    if pool.ceil and mode == "NOTSET":
        if op == "AveragePool" and ceil_extends(pool):
            return ("AveragePool with count_include_pad=1 and ceil_mode=1 counts the ceil-mode extension in the "
                    "divisor: wrong numbers")
        if last_window_in_padding(pool):
            return "ceil_mode=1: onnx-tf keeps a last window that starts in the end padding, which ONNX drops"
    return None


def pads_differ_in_effect(pool: Pool, other: tuple[list[int], list[int]]) -> bool:
    """Pooling in floor mode over ``other`` pads moves, adds or drops windows, or changes a divisor, on some axis."""
    begins, ends = known(pool.explicit_pads(), pool)
    counted = pool.node.op == "AveragePool" and pool.count_pad
    for dim, begin, end, padded_end, other_begin, other_end, stride, span in zip(
            pool.dims, begins, ends, pool.padded_ends(ends), *other, pool.strides, pool.spans):
        windows = (dim + begin + padded_end - span) // stride + 1
        if begin != other_begin or windows != (dim + begin + other_end - span) // stride + 1:
            return True
        reach = (windows - 1) * stride + span
        if counted and min(reach, begin + dim + end) != min(reach, begin + dim + other_end):
            return True
    return False


def ceil_extends(pool: Pool) -> bool:
    """Ceil mode adds a window that floor mode lacks, on some input size."""
    begins, ends = known(pool.explicit_pads(), pool)
    for dim, stride, span, begin, end in zip(pool.dims, pool.strides, pool.spans, begins, ends):
        if stride > 1 and (dim is None or (dim + begin + end - span) % stride):
            return True
    return False


def last_window_in_padding(pool: Pool) -> bool:
    """Ceil mode makes a last window that starts in the end padding, on some input size."""
    begins, ends = known(pool.explicit_pads(), pool)
    for dim, stride, span, begin, end in zip(pool.dims, pool.strides, pool.spans, begins, ends):
        if dim is None:
            if end + stride > span:
                return True
        elif math.ceil((dim + begin + end - span) / stride) * stride >= dim + begin:
            return True
    return False


def reshapes_padding(pool: Pool) -> bool:
    """The node pads, or is in ceil mode: what scope=all rewrites."""
    if pool.same or pool.ceil:
        return True
    return any(pool.pads) and pool.auto_pad == "NOTSET"


def blocker(pool: Pool, opset: int) -> str | None:
    """Why pool_fix cannot rewrite ``pool``, if it cannot."""
    if opset < MIN_OPSET:
        return f"pool_fix needs opset >= {MIN_OPSET} (the model has {opset})"
    if pool.dtype is None:
        return f"the dtype of its input {pool.node.inputs[0].name!r} is not known"
    if pool.shape is not None and len(pool.shape) != pool.rank + 2:
        return f"its input has rank {len(pool.shape)}, its kernel {pool.rank} dims"
    return ambiguity(pool)


def ambiguity(pool: Pool) -> str | None:
    """Why ONNX Runtime and the ONNX spec disagree on what ``pool`` computes, if they do."""
    if pool.auto_pad == "VALID" and pool.ceil:
        return "with auto_pad=VALID, ONNX Runtime applies ceil_mode=1 and the ONNX spec does not"
    if pool.same and any(d != 1 for d in pool.dilations):
        return "with auto_pad=SAME_* and dilations, ONNX Runtime pads as if undilated and the ONNX spec dilated"
    if pool.same and any(span < stride for span, stride in zip(pool.spans, pool.strides)):
        return "with auto_pad=SAME_* and a window narrower than the stride, ONNX runtimes disagree on the padding"
    return None


def plan(graph: gs.Graph, options: PoolFixOptions) -> list[tuple[Pool, str, str | None]]:
    """(pool, why it is rewritten, why it cannot be) for each pooling node the pass is for."""
    nodes = [node for node in graph.nodes if is_pool(node)]
    inferred = inferred_shapes(graph, nodes)
    chosen: list[tuple[Pool, str, str | None]] = []
    for pool in (read(node, inferred) for node in nodes):
        if pool is None:  # read() is None only for nodes that are not pooling, and these all are
            continue
        why = onnx_tf_trouble(pool)
        if why is None and options.scope == "all" and reshapes_padding(pool):
            why = "padding or ceil_mode (scope=all)"
        if why is not None:
            chosen.append((pool, why, blocker(pool, graph.opset)))
    return chosen


def detect(graph: gs.Graph, options: PoolFixOptions) -> list[Finding]:
    return [
        Finding(where=describe(pool.node), nodes=(pool.node.name,), fixable=not blocked,
                message=why + (f"; pool_fix cannot rewrite it: {blocked}" if blocked else ""))
        for pool, why, blocked in plan(graph, options)
    ]


def fix(graph: gs.Graph, options: PoolFixOptions) -> dict | None:
    build, rewritten = None, {}
    for pool, why, blocked in plan(graph, options):
        if blocked:
            log.warning("pool_fix: %s left as it is: %s", describe(pool.node), blocked)
            continue
        if options.scope == "hazards" and same_upper_equivalent(pool):
            pool.node.attrs.pop("pads", None)
            pool.node.attrs["auto_pad"] = "SAME_UPPER"
        else:
            build = build or PoolBuilder(graph)
            rewrite(build, pool)
        rewritten[describe(pool.node)] = why
    return {"rewritten": rewritten} if rewritten else None


def same_upper_equivalent(pool: Pool) -> bool:
    """An AveragePool padded as auto_pad=SAME_UPPER would pad it, in floor mode, undilated.

    onnx-tf pools auto_pad=SAME_UPPER with TensorFlow's SAME padding at any
    batch size, excluding the padding from the count as count_include_pad=0
    asks: the cheapest exact rewrite, nothing added to the graph. Typical
    of PyTorch's AvgPool2d(k, stride=1, padding=k // 2, count_include_pad=False).
    """
    pads = pool.explicit_pads()
    return (pool.node.op == "AveragePool" and not pool.ceil and pads is not None
            and all(d == 1 for d in pool.dilations)
            and all(span >= stride for span, stride in zip(pool.spans, pool.strides))
            and pads == same_pads(pool.dims, pool))


class PoolBuilder(Builder):
    """A graph kit ``Builder`` that also pads as onnx-tf can convert, and reads spatial dims once per tensor."""

    def __init__(self, graph: gs.Graph) -> None:
        super().__init__(graph)
        self.spatial: dict[int, gs.Variable] = {}

    def pad(self, x: gs.Tensor, amounts: gs.Tensor | Sequence[int], fill: gs.Constant | None,
            base: str) -> gs.Variable:
        """``x`` padded by ``amounts`` (ONNX Pad's pads: an int list or a tensor) with ``fill`` (default 0).

        onnx-tf 1.10 traces both branches of a tf.cond for Pad, and its
        negative-pads branch fails on a constant begin pad over 1 ("Invalid
        value in tensor used for shape: -2"); so constant begin pads are
        added one at a time.
        """
        fill_input = [fill] if fill is not None else []
        if isinstance(amounts, gs.Tensor):
            return self.op("Pad", [x, amounts, *fill_input], base, dtype=x.dtype)
        half = len(amounts) // 2
        begins, ends = amounts[:half], amounts[half:]
        for step in range(max(1, *begins)):
            step_pads = [1 if begin > step else 0 for begin in begins] + (list(ends) if step == 0 else [0] * half)
            x = self.op("Pad", [x, self.ints(f"{base}/pads", step_pads), *fill_input], base, dtype=x.dtype)
        return x

    def spatial_dims(self, x: gs.Tensor, rank: int, base: str) -> gs.Variable:
        """The spatial dims of ``x`` at run time (one Shape and Slice per tensor)."""
        if id(x) not in self.spatial:
            self.spatial[id(x)] = self.dims(x, 2, rank + 2, f"{base}/spatial_dims")
        return self.spatial[id(x)]


def rewrite(build: PoolBuilder, pool: Pool) -> None:
    """Replace the node's padding and ceil mode by an explicit Pad, and rescale an average."""
    node, x = pool.node, pool.node.inputs[0]
    base = node.name or node.outputs[0].name
    pads = pool.explicit_pads()
    if pads is None:
        begins, ends = same_pads_at_run_time(build, pool, x, base)
        zeros = build.ints(f"{base}/no_pads", [0, 0])
        pad_amounts = build.op("Concat", [zeros, begins, zeros, ends], f"{base}/pads", dtype=np.int64, axis=0)
    else:
        pad_amounts = [0, 0, *pads[0], 0, 0, *pool.padded_ends(pads[1])]
    fill = None
    if node.op == "MaxPool":
        if pool.dtype is None:  # blocker() keeps such a node from being rewritten
            raise SurgeonError(f"{describe(node)}: the dtype of its input {x.name!r} is not known")
        fill = build.const(f"{base}/lowest", lowest(pool.dtype))
    node.inputs[0] = build.pad(x, pad_amounts, fill, f"{base}/padded")
    for key in ("pads", "auto_pad", "ceil_mode", "count_include_pad"):
        node.attrs.pop(key, None)
    (y,) = node.outputs
    if pool.ceil and y.shape is not None and len(y.shape) == pool.rank + 2:
        # ONNX shape inference ignores the ceil-mode rule that runtimes apply, and exporters copy its shapes
        y.shape = [*y.shape[:2], *(pooled_dims(pool, *pads) if pads is not None else [None] * pool.rank)]
    if node.op == "AveragePool":
        rescale(build, pool, x, base, pads, pad_amounts)


def rescale(build: PoolBuilder, pool: Pool, x: gs.Tensor, base: str, pads, pad_amounts) -> None:
    """Turn the mean over the whole padded window into the mean ONNX takes."""
    if pads is not None and all(dim is not None for dim in pool.dims):
        factor = static_factor(pool, *pads)
        if not np.all(factor == 1):
            build.insert_after(pool.node, "Mul", [build.const(f"{base}/divisor_fix", factor.astype(pool.dtype))],
                               f"{base}/divisor")
        return
    if pads is None:  # SAME_*: count_include_pad=1 counts every padded position, 0 the input's
        if pool.count_pad:
            return
        ones_dims, skips = build.spatial_dims(x, pool.rank, base), pad_amounts
    else:
        counted, skip = counted_and_skipped(pool, *pads)
        if not any(skip):
            return
        ones_dims = build.spatial_dims(x, pool.rank, base)
        if any(counted):
            ones_dims = build.op("Add", [ones_dims, build.ints(f"{base}/counted_pads", counted)],
                                 f"{base}/counted_dims", dtype=np.int64)
        skips = skip
    ones_shape = build.op("Concat", [build.ints(f"{base}/one_one", [1, 1]), ones_dims], f"{base}/mask_shape",
                          dtype=np.int64, axis=0)
    one = build.const(f"{base}/one", np.ones(1, pool.dtype))
    ones = build.op("ConstantOfShape", [ones_shape], f"{base}/ones", dtype=pool.dtype, value=one)
    mask = build.pad(ones, skips, None, f"{base}/counted_mask")
    attrs = {key: value for key, value in pool.node.attrs.items() if key in ("kernel_shape", "strides", "dilations")}
    share = build.op("AveragePool", [mask], f"{base}/counted_share", dtype=pool.dtype, **attrs)
    build.insert_after(pool.node, "Div", [share], f"{base}/divisor")


def counted_and_skipped(pool: Pool, begins: Sequence[int], ends: Sequence[int]) -> tuple[list[int], list[int]]:
    """Per axis, the pads that count in the divisor; and the Pad amounts that surround them with zeros."""
    padded_ends = pool.padded_ends(ends)
    if pool.count_pad:
        counted = [begin + end for begin, end in zip(begins, ends)]
        return counted, [0, 0, *[0] * pool.rank, 0, 0, *[padded - end for padded, end in zip(padded_ends, ends)]]
    return [0] * pool.rank, [0, 0, *begins, 0, 0, *padded_ends]


def pooled_dims(pool: Pool, begins: Sequence[int], ends: Sequence[int]) -> list[int | None]:
    """The output's spatial dims, None where the input's are not static."""
    return [None if dim is None else (dim + begin + padded_end - span) // stride + 1
            for dim, begin, padded_end, span, stride in zip(pool.dims, begins, pool.padded_ends(ends), pool.spans,
                                                            pool.strides)]


def static_factor(pool: Pool, begins: Sequence[int], ends: Sequence[int]) -> np.ndarray:
    """kernel size / positions counted, per output position, shaped [1, 1, *out]."""
    factor = np.ones([1, 1], dtype=np.float64)
    for dim, k, s, d, begin, end, out in zip(pool.dims, pool.kernel, pool.strides, pool.dilations, begins, ends,
                                             pooled_dims(pool, begins, ends)):
        taps = (np.arange(out) * s - begin)[:, None] + np.arange(k) * d
        low, high = (-begin, dim + end) if pool.count_pad else (0, dim)
        factor = factor[..., None] * (k / ((taps >= low) & (taps < high)).sum(axis=1))
    return factor


def same_pads_at_run_time(build: PoolBuilder, pool: Pool, x: gs.Tensor, base: str) -> tuple[gs.Variable, gs.Variable]:
    """SAME_* begin and end pads from the input's shape: total = max(span - 1 - (dim - 1) % stride, 0)."""
    def int_op(op: str, a: gs.Tensor, b: Sequence[int], name: str) -> gs.Variable:
        return build.op(op, [a, build.ints(f"{base}/{name}_by", b)], f"{base}/{name}", dtype=np.int64)

    less_one = int_op("Sub", build.spatial_dims(x, pool.rank, base), [1], "dims_less_one")
    rest = int_op("Mod", less_one, pool.strides, "rest")
    need = build.op("Sub", [build.ints(f"{base}/spans_less_one", [span - 1 for span in pool.spans]), rest],
                    f"{base}/need", dtype=np.int64)
    total = int_op("Max", need, [0] * pool.rank, "total")
    rounded = int_op("Add", total, [1], "rounded") if pool.auto_pad == "SAME_LOWER" else total
    begins = int_op("Div", rounded, [2], "begins")
    return begins, build.op("Sub", [total, begins], f"{base}/ends", dtype=np.int64)


def lowest(dtype: np.dtype) -> np.ndarray:
    info = np.finfo(dtype) if np.issubdtype(dtype, np.floating) else np.iinfo(dtype)
    return np.array(info.min, dtype=dtype)


@hookimpl
def surgeon_passes():
    return [RewritePass(name="pool_fix", doc="Pooling that onnx-tf converts natively and exactly: explicit Pad, "
                        "floor mode, exact average divisor (no PyFunc).",
                        options=PoolFixOptions, run=fix, detect=detect,
                        fixes=frozenset({Hazard.PYTHON_CALLBACK}))]
