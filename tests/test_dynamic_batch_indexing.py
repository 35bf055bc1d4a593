"""dynamic_batch follows index arithmetic and broadcast buffers.

transformers builds attention masks by flattening the [batch, seq] mask to
[batch * seq, 1] and gathering it with ``arange(batch) * seq + positions``;
tracing at a fixed batch folds the arange into a constant. BERT broadcasts its
``token_type_ids`` buffer (leading dim 1) to the batch through Where, Expand and
GatherElements. Each pattern is built by hand at export batch 1 and 2; after
the pass, onnxruntime at batch 1, 3 and 8 must compute what numpy computes
for each sample. Gathers that truly depend on the batch are refused, naming
the node.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from surgeon import SurgeonError
from surgeon.testing import apply_pass, apply_pass_with_record, assert_idempotent
from surgeon.verify import onnxruntime_runner

SIZES = (1, 3, 8)
EXPORT_BATCHES = (1, 2)
STEPS = 5  # sequence length of the mask


def model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
          constants: dict[str, np.ndarray]) -> onnx.ModelProto:
    """An opset-17 model of ``nodes`` with ``constants`` as initializers, checked."""
    graph = helper.make_graph(nodes, "indexing", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(value), name) for name, value in constants.items()])
    built = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(built, full_check=True)
    return built


def mask_input(batch: int | str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("mask", TensorProto.FLOAT, [batch, STEPS])


def sample_numbers(batch: int) -> np.ndarray:
    """arange(batch)[:, None, None], as tracing folds it."""
    return np.arange(batch, dtype=np.int64).reshape(batch, 1, 1)


def gathered_rows(batch: int, sample_index: np.ndarray, positions: np.ndarray,
                  stride: int | None = None) -> onnx.ModelProto:
    """``mask`` [B, 5] flattened to [B * 5, 1] and gathered with ``sample_index * stride + positions`` (the stride
    read from the mask's shape when None), then reshaped to the shape of the indices, as transformers does."""
    nodes = [
        helper.make_node("Flatten", ["mask"], ["flat"], axis=2),
        helper.make_node("Mul", ["sample_index", "stride"], ["rows"], name="rows"),
        helper.make_node("Add", ["positions", "rows"], ["indices"]),
        helper.make_node("Gather", ["flat", "indices"], ["picked"], name="gather_rows", axis=0),
        helper.make_node("Reshape", ["picked", "minus_one"], ["line"]),
        helper.make_node("Shape", ["indices"], ["index_shape"]),
        helper.make_node("Reshape", ["line", "index_shape"], ["y"]),
    ]
    constants = {"sample_index": sample_index, "positions": positions, "minus_one": np.array([-1])}
    if stride is None:
        nodes[1:1] = [helper.make_node("Shape", ["mask"], ["mask_shape"]),
                      helper.make_node("Gather", ["mask_shape", "one"], ["stride"], axis=0)]
        constants["one"] = np.array([1])
    else:
        constants["stride"] = np.array(stride)
    rows = [batch, *positions.shape[1:]]
    return model(nodes, [mask_input(batch)], [helper.make_tensor_value_info("y", TensorProto.FLOAT, rows)],
                 constants)


def positions_of(count: int) -> np.ndarray:
    return np.arange(count, dtype=np.int64).reshape(1, 1, count)


def mask_rows(batch: int) -> onnx.ModelProto:
    """The attention mask of transformers: each sample reads its own row of the flattened mask."""
    return gathered_rows(batch, sample_numbers(batch), positions_of(STEPS))


def mask_rows_constant_stride(batch: int) -> onnx.ModelProto:
    """The same, with the sequence length folded into a constant stride."""
    return gathered_rows(batch, sample_numbers(batch), positions_of(STEPS), stride=STEPS)


def ranged_rows(batch: int | str, rows_at_once: bool = False) -> onnx.ModelProto:
    """The sample index computed as the exporter writes it with a dynamic batch: Range(0, N) from the mask's
    shape, unsqueezed, times the sequence length (or Range(0, N * 5, 5) at once), plus positions."""
    nodes = [
        helper.make_node("Flatten", ["mask"], ["flat"], axis=2),
        helper.make_node("Shape", ["mask"], ["mask_shape"]),
        helper.make_node("Gather", ["mask_shape", "zero"], ["count"], axis=0),
        helper.make_node("Gather", ["mask_shape", "one"], ["steps"], axis=0),
    ]
    if rows_at_once:
        nodes += [helper.make_node("Mul", ["count", "steps"], ["limit"]),
                  helper.make_node("Range", ["zero", "limit", "steps"], ["starts"]),
                  helper.make_node("Unsqueeze", ["starts", "inner_axes"], ["rows"])]
    else:
        nodes += [helper.make_node("Range", ["zero", "count", "one"], ["numbers"]),
                  helper.make_node("Unsqueeze", ["numbers", "inner_axes"], ["sample_index"]),
                  helper.make_node("Mul", ["sample_index", "steps"], ["rows"])]
    nodes += [
        helper.make_node("Add", ["positions", "rows"], ["indices"]),
        helper.make_node("Gather", ["flat", "indices"], ["picked"], name="gather_rows", axis=0),
        helper.make_node("Reshape", ["picked", "minus_one"], ["line"]),
        helper.make_node("Shape", ["indices"], ["index_shape"]),
        helper.make_node("Reshape", ["line", "index_shape"], ["y"]),
    ]
    return model(nodes, [mask_input(batch)], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 1, STEPS])],
                 {"zero": np.array(0), "one": np.array(1), "inner_axes": np.array([1, 2]),
                  "positions": positions_of(STEPS), "minus_one": np.array([-1])})


def ranged_sample_index(batch: int) -> onnx.ModelProto:
    return ranged_rows(batch)


def ranged_rows_at_once(batch: int) -> onnx.ModelProto:
    return ranged_rows(batch, rows_at_once=True)


def expected_rows(mask: np.ndarray) -> np.ndarray:
    return mask.reshape(len(mask), 1, STEPS)


BUFFER = np.array([[(k * 7) % 3 for k in range(64)]], dtype=np.int64)  # token types, leading dim 1
EMBEDDING = np.linspace(-1, 1, 3 * 4, dtype=np.float32).reshape(3, 4)
POSITIONS = np.array([[3, 1, 4, 1, 5]], dtype=np.int64)


def shape_through_where(name: str, shape: list[int]) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """``shape`` with -1 entries made 1, computed with Where as torch exports ``expand`` (shape inference does
    not follow it): nodes making ``name``, and their constants."""
    return [
        helper.make_node("ConstantOfShape", [f"{name}_rank"], [f"{name}_ones"],
                         value=numpy_helper.from_array(np.array([1], dtype=np.int64))),
        helper.make_node("Mul", [f"{name}_ones", "minus_one"], [f"{name}_minus"]),
        helper.make_node("Equal", [f"{name}_given", f"{name}_minus"], [f"{name}_unset"]),
        helper.make_node("Where", [f"{name}_unset", f"{name}_ones", f"{name}_given"], [name]),
    ], {f"{name}_rank": np.array([len(shape)]), f"{name}_given": np.array(shape)}


def broadcast_buffer(batch: int) -> onnx.ModelProto:
    """BERT's token types: its [1, 64] buffer expanded, gathered at the positions, expanded to the export batch
    and embedded, then added to the batch."""
    first, first_constants = shape_through_where("buffer_shape", [1, -1])
    second, second_constants = shape_through_where("types_shape", [batch, STEPS])
    nodes = [
        *first,
        helper.make_node("Expand", ["buffer", "buffer_shape"], ["expanded"]),
        helper.make_node("GatherElements", ["expanded", "positions"], ["picked"], axis=1),
        *second,
        helper.make_node("Expand", ["picked", "types_shape"], ["types"]),
        helper.make_node("Gather", ["embedding", "types"], ["embedded"], axis=0),
        helper.make_node("Add", ["x", "embedded"], ["y"], name="add_types"),
    ]
    return model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, STEPS, 4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, STEPS, 4])],
                 {"buffer": BUFFER, "positions": POSITIONS, "embedding": EMBEDDING, "minus_one": np.array(-1),
                  **first_constants, **second_constants})


def expected_with_types(x: np.ndarray) -> np.ndarray:
    return x + EMBEDDING[BUFFER[0, POSITIONS[0]]][None]


PATTERNS: dict[str, tuple[Callable[[int], onnx.ModelProto], Callable[[np.ndarray], np.ndarray]]] = {
    "mask_rows": (mask_rows, expected_rows),
    "mask_rows_constant_stride": (mask_rows_constant_stride, expected_rows),
    "ranged_sample_index": (ranged_sample_index, expected_rows),
    "ranged_rows_at_once": (ranged_rows_at_once, expected_rows),
    "broadcast_buffer": (broadcast_buffer, expected_with_types),
}


def data(rewritten: onnx.ModelProto, size: int) -> np.ndarray:
    """Seeded random data for the single input of ``rewritten`` at batch ``size``: distinct in every sample."""
    dims = [d.dim_value for d in rewritten.graph.input[0].type.tensor_type.shape.dim[1:]]
    return np.random.default_rng(size).standard_normal([size, *dims]).astype(np.float32)


@pytest.mark.parametrize("export_batch", EXPORT_BATCHES)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_each_pattern_computes_the_same_at_every_batch(pattern: str, export_batch: int) -> None:
    build, expected = PATTERNS[pattern]
    rewritten = apply_pass("dynamic_batch", build(export_batch))
    assert rewritten.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    run = onnxruntime_runner(rewritten)
    for size in SIZES:
        x = data(rewritten, size)
        (y,) = run([[x]])[0]
        np.testing.assert_allclose(y, expected(x), rtol=1e-6, atol=1e-6, err_msg=f"batch {size}")


@pytest.mark.parametrize("export_batch", EXPORT_BATCHES)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_each_pattern_is_rewritten_once(pattern: str, export_batch: int) -> None:
    assert_idempotent("dynamic_batch", PATTERNS[pattern][0](export_batch))


@pytest.mark.parametrize("export_batch", EXPORT_BATCHES)
def test_the_folded_sample_index_is_rebuilt_from_the_runtime_batch(export_batch: int) -> None:
    rewritten, record = apply_pass_with_record("dynamic_batch", mask_rows(export_batch))
    assert record.details is not None
    assert f"node 'rows' (Mul): 'sample_index' numbers the samples of the export batch {export_batch} on axis 0" \
        in "\n".join(record.details["rewritten"])
    assert "sample_index" not in {t.name for t in rewritten.graph.initializer}
    assert [n.op_type for n in rewritten.graph.node].count("Range") == 1


def test_a_dynamic_export_s_index_arithmetic_is_followed_not_rewritten() -> None:
    _, record = apply_pass_with_record("dynamic_batch", ranged_rows("batch"))
    assert not record.changed


@pytest.mark.parametrize(("export_batch", "rewritten"), [(1, []), (2, ["node 'add_types' (Add)"])])
def test_a_broadcast_buffer_is_rewritten_only_where_it_repeats_the_export_batch(export_batch: int,
                                                                                rewritten: list[str]) -> None:
    _, record = apply_pass_with_record("dynamic_batch", broadcast_buffer(export_batch))
    assert record.details is not None
    assert [line.split(": ")[0] for line in record.details["rewritten"]] == rewritten


# -- gathers that truly depend on the batch: refused, naming the node

def fixed_rows(batch: int) -> onnx.ModelProto:
    """The flattened mask gathered with a constant index list: the first sample's row at any batch."""
    return model([helper.make_node("Flatten", ["mask"], ["flat"], axis=2),
                  helper.make_node("Gather", ["flat", "positions"], ["y"], name="gather_rows", axis=0)],
                 [mask_input(batch)], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, STEPS, 1])],
                 {"positions": positions_of(STEPS)})


REFUSED: dict[str, tuple[Callable[[int], onnx.ModelProto], str]] = {
    "a fixed index list": (
        fixed_rows,
        r"node 'gather_rows' \(Gather\) picks samples along the batch axis; the output depends on the batch size"),
    "samples numbered backwards": (
        lambda b: gathered_rows(b, sample_numbers(b)[::-1].copy(), positions_of(STEPS)),
        r"node 'gather_rows' \(Gather\) picks samples along the batch axis"),
    "a stride shorter than a sample": (
        lambda b: gathered_rows(b, sample_numbers(b), positions_of(STEPS), stride=STEPS - 1),
        r"node 'gather_rows' \(Gather\) gathers along the batch axis, where each sample has 5 elements, with "
        r"indices i \* 4 \+ \(0 to 4\) for sample i; samples would mix"),
    "positions past the sample": (
        lambda b: gathered_rows(b, sample_numbers(b), positions_of(STEPS + 1)),
        r"node 'gather_rows' \(Gather\) gathers along the batch axis, where each sample has 5 elements, with "
        r"indices i \* 5 \+ \(0 to 5\) for sample i; samples would mix"),
}
# one sample is numbered the same forwards and backwards: that case exists from export batch 2 on
REFUSED_AT = [(case, batch) for case in REFUSED for batch in EXPORT_BATCHES
              if (case, batch) != ("samples numbered backwards", 1)]


@pytest.mark.parametrize(("case", "export_batch"), REFUSED_AT)
def test_a_gather_that_depends_on_the_batch_is_refused_naming_the_node(case: str, export_batch: int) -> None:
    build, message = REFUSED[case]
    with pytest.raises(SurgeonError, match=message):
        apply_pass("dynamic_batch", build(export_batch))


@pytest.mark.parametrize("batch", [2, "batch"])
def test_the_sample_numbers_used_as_data_are_refused(batch: int | str) -> None:
    """``x + arange(batch)[:, None]``: each sample's output depends on where it sits in the batch, which only a
    gather of its own rows may use."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["count"], axis=0),
             helper.make_node("Range", ["zero", "count", "one"], ["numbers"]),
             helper.make_node("Cast", ["numbers"], ["as_float"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["as_float", "axes"], ["column"]),
             helper.make_node("Add", ["x", "column"], ["y"], name="add_numbers")]
    graph = helper.make_graph(nodes, "numbers_as_data", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                       [batch, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
                              [numpy_helper.from_array(np.array(0, np.int64), "zero"),
                               numpy_helper.from_array(np.array(1, np.int64), "one"),
                               numpy_helper.from_array(np.array([1], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(SurgeonError, match="uses the numbers of the samples in the batch as data"):
        apply_pass("dynamic_batch", model)
