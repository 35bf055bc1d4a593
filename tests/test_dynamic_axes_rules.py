"""dynamic_axes, pattern by pattern: the token length follows the runtime length where a text model bakes it in.

Each pattern is built by hand with onnx.helper at the export length L, the way tracing leaves it (positions folded
from ``arange``, position embeddings and causal masks folded to L rows, reshapes and expands to shapes holding L).
After the pass, onnxruntime runs the model at several lengths S <= L; at each, it must compute what the original
computes for the same input zero-padded to L, cut back to S on each output axis that holds the length. What the
pass cannot follow is refused, naming the node and why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from surgeon import SurgeonError, UsageError
from surgeon.errors import PluginError
from surgeon.testing import apply_pass, apply_pass_with_record, assert_idempotent, run_onnx

L = 6  # the export length: no other dim of the patterns is 6 unless a test says so
D = 8  # model width (2 heads of 4)
V = 11  # vocabulary
SIZES = (1, 2, L - 1, L)  # the runtime lengths checked (S <= L)
FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64


def model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
          constants: Mapping[str, np.ndarray] | None = None, opset: int = 17,
          domains: Sequence[tuple[str, int]] = ()) -> onnx.ModelProto:
    """A model of ``nodes`` with ``constants`` as initializers, checked."""
    graph = helper.make_graph(nodes, "pattern", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in (constants or {}).items()])
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in domains)]
    built = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    if not domains:
        onnx.checker.check_model(built, full_check=True)
    return built


def tensor(name: str, dims: Sequence[int | str], dtype: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(dims))


def weights(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def dims(values) -> list[list]:
    return [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values]


def cut(array: np.ndarray, axes: Sequence[int | tuple[int, int]], size: int) -> np.ndarray:
    """``array`` cut to ``size`` on each of ``axes``; an (axis, inner) pair holds the length with ``inner`` entries
    per position merged in (cut to ``size * inner``)."""
    index = [slice(None)] * array.ndim
    for axis in axes:
        axis, inner = axis if isinstance(axis, tuple) else (axis, 1)
        index[axis] = slice(0, size * inner)
    return array[tuple(index)]


def padded(array: np.ndarray, axes: int | Sequence[int], size: int) -> np.ndarray:
    """``array`` cut to ``size`` on ``axes`` (one or several), then zero-padded back to its length there."""
    out = np.zeros_like(array)
    index = [slice(None)] * array.ndim
    for axis in [axes] if isinstance(axes, int) else axes:
        index[axis] = slice(0, size)
    out[tuple(index)] = array[tuple(index)]
    return out


def assert_follows_length(original: onnx.ModelProto, rewritten: onnx.ModelProto, full: Sequence[np.ndarray],
                          along: Mapping[int, int | Sequence[int]],
                          holds: Sequence[Sequence[int | tuple[int, int]]], sizes: Sequence[int] = SIZES,
                          atol: float = 1e-5) -> None:
    """At each length S, ``rewritten`` fed ``full`` (one array per input, at the export length) cut to S computes
    what ``original`` computes for it zero-padded to L, cut to S on the axes ``holds`` lists for each output.

    ``along``: input index -> the axis (or axes) that hold the length (the other inputs are fed whole); ``holds``:
    see ``cut``."""
    for size in sizes:
        short = [cut(a, [along[k]] if isinstance(along[k], int) else along[k], size) if k in along else a
                 for k, a in enumerate(full)]
        pad = [padded(a, along[k], size) if k in along else a for k, a in enumerate(full)]
        expected = [cut(out, axes, size) for out, axes in zip(run_onnx(original, pad), holds, strict=True)]
        got = run_onnx(rewritten, short)
        assert len(got) == len(expected)
        for k, (actual, wanted) in enumerate(zip(got, expected)):
            assert actual.shape == wanted.shape, f"output {k} at length {size}: {actual.shape} != {wanted.shape}"
            np.testing.assert_allclose(actual, wanted, rtol=1e-5, atol=atol,
                                       err_msg=f"output {k} at length {size}")


def rewrite(built: onnx.ModelProto, *axes: str):
    """The model after dynamic_axes with ``axes``, and the record of the pass."""
    rewritten, record = apply_pass_with_record("dynamic_axes", built, axes=list(axes))
    assert record.changed
    return rewritten, record


def refusal(built: onnx.ModelProto, *axes: str) -> str:
    """The message of the pass's refusal (a SurgeonError of its own, not a crash)."""
    with pytest.raises(SurgeonError) as caught:
        apply_pass("dynamic_axes", built, axes=list(axes))
    error = caught.value
    if isinstance(error, PluginError):
        assert isinstance(error.__cause__, SurgeonError) and not isinstance(error.__cause__, PluginError), \
            f"the pass crashed instead of refusing: {error}"
    return str(error)


def ids(batch: int = 1, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, (batch, L)).astype(np.int64)


def floats(*shape: int, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- what bakes the length in: positions, position embeddings, reshapes, masks


def folded_positions(folded: str = "initializer") -> onnx.ModelProto:
    """positions = torch.arange(L)[None]; x = tok_emb(ids) + pos_emb(positions): tracing folds the arange."""
    nodes = [helper.make_node("Gather", ["tokens", "input_ids"], ["tok"], name="tok"),
             helper.make_node("Gather", ["table", "positions"], ["pos"], name="pos_emb"),
             helper.make_node("Add", ["tok", "pos"], ["y"], name="add")]
    constants = {"tokens": weights(V, D), "table": weights(16, D, seed=1)}
    arange = np.arange(L, dtype=np.int64).reshape(1, L)
    if folded == "initializer":
        constants["positions"] = arange
    else:
        nodes.insert(0, helper.make_node("Constant", [], ["positions"], value=numpy_helper.from_array(arange)))
    return model(nodes, [tensor("input_ids", [1, L], INT64)], [tensor("y", [1, L, D])], constants)


@pytest.mark.parametrize("folded", ["initializer", "constant node"])
def test_folded_positions_are_cut_to_the_runtime_length(folded):
    built = folded_positions(folded)
    rewritten, record = rewrite(built, "input_ids:1:seq")
    assert dims(rewritten.graph.input) == [[1, "seq"]]
    assert dims(rewritten.graph.output) == [[1, "seq", D]]
    assert record.details["name"] == "seq" and record.details["export_length"] == L
    assert record.details["inputs"] == ["input_ids:1"]
    assert record.details["rewritten"] == [
        "node 'pos_emb' (Gather): 'positions' holds the positions 0 to 5; it is cut to the runtime length"]
    assert_follows_length(built, rewritten, [ids()], {0: 1}, [[1]])


def test_a_folded_position_embedding_is_cut():
    # x + self.pos_embed[:, :L]: the slice of the parameter folds to a [1, L, D] constant
    built = model([helper.make_node("Add", ["x", "pos_embed"], ["y"], name="add_pos")],
                  [tensor("x", [1, L, D])], [tensor("y", [1, L, D])], {"pos_embed": weights(1, L, D)})
    rewritten, record = rewrite(built, "x:1:seq")
    assert dims(rewritten.graph.output) == [[1, "seq", D]]
    assert record.details["rewritten"] == ["node 'add_pos' (Add): 'pos_embed' has the export length 6 on axis 1; it "
                                           "is cut to the runtime length"]
    assert_follows_length(built, rewritten, [floats(1, L, D)], {0: 1}, [[1]])


def test_a_head_split_and_join_follow_the_length():
    # q.view(1, L, -1, 4) ... .reshape(1, L, -1): head_dim 4, 2 heads, L baked into both shapes
    nodes = [helper.make_node("Reshape", ["x", "split"], ["heads"], name="split_heads"),
             helper.make_node("Mul", ["heads", "scale"], ["scaled"]),
             helper.make_node("Reshape", ["scaled", "join"], ["y"], name="join_heads")]
    built = model(nodes, [tensor("x", [1, L, D])], [tensor("y", [1, L, D])],
                  {"split": np.array([1, L, -1, 4]), "join": np.array([1, L, -1]),
                   "scale": np.array([0.5, -1, 2, 3], np.float32)})
    rewritten, record = rewrite(built, "x:1:seq")
    assert dims(rewritten.graph.output) == [[1, "seq", D]]
    rewritten_text = "\n".join(record.details["rewritten"])
    assert "node 'split_heads' (Reshape): shape entry 1 (6) bakes the export length 6" in rewritten_text
    assert "node 'join_heads' (Reshape): shape entry 1 (6) bakes the export length 6" in rewritten_text
    # the shapes are no longer the constants that baked L
    reshapes = [n for n in rewritten.graph.node if n.op_type == "Reshape"]
    assert not {n.input[1] for n in reshapes} & {"split", "join"}
    assert_follows_length(built, rewritten, [floats(1, L, D)], {0: 1}, [[1]])


def test_a_length_merged_with_the_width_follows_with_its_factor():
    # x.reshape(1, L * D) @ W: the entry L * D bakes the length; W's rows are cut to S * D
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["merged"], name="flatten"),
             helper.make_node("MatMul", ["merged", "w"], ["y"], name="dense")]
    built = model(nodes, [tensor("x", [1, L, D])], [tensor("y", [1, 3])],
                  {"flat": np.array([1, L * D]), "w": weights(L * D, 3)})
    rewritten, record = rewrite(built, "x:1:seq")
    assert record.details["rewritten"] == [
        "node 'flatten' (Reshape): shape entry 1 (48) bakes the export length 6; it follows the runtime length instead",
        "node 'dense' (MatMul): 'w' has the export length 6 on axis 0; it is cut to the runtime length"]
    assert_follows_length(built, rewritten, [floats(1, L, D)], {0: 1}, [[]])


def test_a_shape_computed_around_a_baked_length_follows_it():
    # x.view(x.size(0), L, -1, 4) with L baked as a constant among computed entries; heads merged back after
    nodes = [helper.make_node("Shape", ["x"], ["batch"], start=0, end=1),
             helper.make_node("Concat", ["batch", "length", "minus_one", "four"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["heads"], name="split_heads"),
             helper.make_node("Transpose", ["heads"], ["by_head"], perm=[0, 2, 1, 3]),
             helper.make_node("Transpose", ["by_head"], ["by_position"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["by_position", "rows"], ["y"], name="merge")]
    built = model(nodes, [tensor("x", [1, L, D])], [tensor("y", [1, L, D])],
                  {"length": np.array([L]), "minus_one": np.array([-1]), "four": np.array([4]),
                   "rows": np.array([1, -1, D])})
    rewritten, record = rewrite(built, "x:1:seq")
    assert record.details["rewritten"] == [
        "node 'split_heads' (Reshape): shape entry 1 (6) bakes the export length 6; it follows the runtime length "
        "instead"]
    assert dims(rewritten.graph.output) == [[1, "seq", D]]
    assert_follows_length(built, rewritten, [floats(1, L, D)], {0: 1}, [[1]])


def test_an_output_that_merges_the_length_with_other_dims_is_refused():
    # each head's positions merged with its 4 dims: no name says 4 x seq, and no check could cut it
    nodes = [helper.make_node("Reshape", ["x", "heads"], ["split"], name="split_heads"),
             helper.make_node("Transpose", ["split"], ["by_head"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["by_head", "rows"], ["y"], name="merge")]
    built = model(nodes, [tensor("x", [1, L, D])], [tensor("y", [1, 2, L * 4])],
                  {"heads": np.array([1, L, -1, 4]), "rows": np.array([1, 2, -1])})
    with pytest.raises(PluginError, match=r"output 'y' holds the length merged with other dims on axis 2 \(24 at "
                                          r"the export length 6\)"):
        rewrite(built, "x:1:seq")


def test_an_index_constant_over_another_axis_is_no_positions():
    # x[:, :, arange(W)] with the width W equal to the export length: those indices are channels, not positions
    nodes = [helper.make_node("Gather", ["x", "channels"], ["picked"], name="pick_channels", axis=2),
             helper.make_node("Mul", ["picked", "two"], ["y"])]
    built = model(nodes, [tensor("x", [1, L, L])], [tensor("y", [1, L, L])],
                  {"channels": np.arange(L, dtype=np.int64), "two": np.array(2, np.float32)})
    rewritten, _ = apply_pass_with_record("dynamic_axes", built, axes=["x:1:seq"])
    assert dims(rewritten.graph.output) == [[1, "seq", L]]
    assert_follows_length(built, rewritten, [floats(1, L, L)], {0: 1}, [[1]])


@pytest.mark.parametrize("between", ["none", "Cast", "Unsqueeze"])
def test_feature_indices_over_a_wider_axis_are_no_positions(between):
    # x[:, :, torch.arange(L)]: the first L of D features, picked by number from data that holds the length on
    # axis 1; the indices are features, so the output keeps all L of them at every S, also when the arange is cast
    # or reshaped on its way (positions are judged where they are used)
    nodes = [helper.make_node("Gather", ["x", "features" if between == "none" else "indices"], ["y"],
                              name="pick_features", axis=2)]
    if between == "Cast":
        nodes.insert(0, helper.make_node("Cast", ["features"], ["indices"], to=TensorProto.INT32))
    if between == "Unsqueeze":
        nodes.insert(0, helper.make_node("Unsqueeze", ["features", "first"], ["indices"]))
        nodes.append(helper.make_node("Squeeze", ["y", "third"], ["picked"]))
    output = tensor("y", [1, L, L]) if between != "Unsqueeze" else tensor("picked", [1, L, L])
    built = model(nodes, [tensor("x", [1, L, D])], [output],
                  {"features": np.arange(L, dtype=np.int64), "first": np.array([0]), "third": np.array([2])})
    rewritten, record = rewrite(built, "x:1:seq")
    assert record.details["rewritten"] == []  # the indices are not cut
    assert dims(rewritten.graph.output) == [[1, "seq", L]]
    assert_follows_length(built, rewritten, [floats(1, L, D)], {0: 1}, [[1]])


def test_a_one_hot_over_a_vocabulary_of_the_export_length_keeps_its_arange():
    # (ids[..., None] == torch.arange(V)).float() @ table with V == L: the arange numbers the vocabulary, not the
    # positions; ids >= S keep their row of the table at every S
    nodes = [helper.make_node("Unsqueeze", ["input_ids", "last"], ["ids_column"]),
             helper.make_node("Equal", ["ids_column", "vocabulary"], ["hot"], name="one_hot"),
             helper.make_node("Cast", ["hot"], ["hot_float"], to=FLOAT),
             helper.make_node("MatMul", ["hot_float", "table"], ["y"], name="embed")]
    built = model(nodes, [tensor("input_ids", [1, L], INT64)], [tensor("y", [1, L, D])],
                  {"last": np.array([-1]), "vocabulary": np.arange(L, dtype=np.int64), "table": weights(L, D)})
    rewritten, record = rewrite(built, "input_ids:1:seq")
    assert record.details["rewritten"] == []  # neither the arange nor the table is cut
    assert dims(rewritten.graph.output) == [[1, "seq", D]]
    descending = np.arange(L - 1, -1, -1, dtype=np.int64).reshape(1, L)  # at every S < L, ids >= S come first
    assert_follows_length(built, rewritten, [descending], {0: 1}, [[1]])
    assert_follows_length(built, rewritten, [np.random.default_rng(4).integers(0, L, (1, L))], {0: 1}, [[1]])
    (top,) = run_onnx(rewritten, [descending[:, :1]])  # S = 1, token id L - 1
    np.testing.assert_allclose(top[0, 0], weights(L, D)[L - 1], rtol=1e-6)


def attention(mask: bool) -> onnx.ModelProto:
    """One causal self-attention block of 2 heads, the mask folded to [1, 1, L, L] (-1e9 above the diagonal)."""
    nodes = []
    for name in "qkv":
        nodes += [helper.make_node("MatMul", ["x", f"w{name}"], [f"{name}_flat"]),
                  helper.make_node("Reshape", [f"{name}_flat", "split"], [f"{name}_heads"], name=f"split_{name}")]
    nodes += [helper.make_node("Transpose", ["q_heads"], ["q"], perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", ["k_heads"], ["kt"], perm=[0, 2, 3, 1]),
              helper.make_node("Transpose", ["v_heads"], ["v"], perm=[0, 2, 1, 3]),
              helper.make_node("MatMul", ["q", "kt"], ["raw"], name="scores"),
              helper.make_node("Mul", ["raw", "scale"], ["scores"])]
    if mask:
        nodes.append(helper.make_node("Add", ["scores", "causal"], ["masked"], name="add_mask"))
    nodes += [helper.make_node("Softmax", ["masked" if mask else "scores"], ["probs"], axis=-1),
              helper.make_node("MatMul", ["probs", "v"], ["context"], name="context"),
              helper.make_node("Transpose", ["context"], ["context_t"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["context_t", "join"], ["joined"], name="join_heads"),
              helper.make_node("MatMul", ["joined", "wo"], ["y"])]
    causal = np.triu(np.full((L, L), -1e9, np.float32), 1).reshape(1, 1, L, L)
    constants = {"wq": weights(D, D, seed=1), "wk": weights(D, D, seed=2), "wv": weights(D, D, seed=3),
                 "wo": weights(D, D, seed=4), "split": np.array([1, L, 2, 4]), "join": np.array([1, L, -1]),
                 "scale": np.array(0.5, np.float32), "causal": causal}
    return model(nodes, [tensor("x", [1, L, D])], [tensor("y", [1, L, D]), tensor("probs", [1, 2, L, L])],
                 constants)


def test_causal_attention_follows_the_length_and_its_mask_keeps_the_padding_inert():
    built = attention(mask=True)
    rewritten, record = rewrite(built, "x:1:seq")
    assert dims(rewritten.graph.output) == [[1, "seq", D], [1, 2, "seq", "seq"]]
    assert any("node 'add_mask' (Add): 'causal' has the export length 6 on axis 2" in line
               for line in record.details["rewritten"]), record.details
    assert_follows_length(built, rewritten, [floats(1, L, D)], {0: 1}, [[1], [2, 3]])


def test_without_a_mask_the_padding_is_not_inert():
    # the comparison with the padded original is not vacuous: keys of padding take part in an unmasked softmax
    built = attention(mask=False)
    rewritten, _ = rewrite(built, "x:1:seq")
    assert_follows_length(built, rewritten, [floats(1, L, D)], {0: 1}, [[1], [2, 3]], sizes=[L])
    with pytest.raises(AssertionError):
        assert_follows_length(built, rewritten, [floats(1, L, D)], {0: 1}, [[1], [2, 3]], sizes=[L - 2])


def expanded_mask() -> onnx.ModelProto:
    """attention_mask[:, None, None, :].expand(1, 1, L, L), added to the scores."""
    nodes = [helper.make_node("Unsqueeze", ["attention_mask", "axes12"], ["mask4"]),
             helper.make_node("Expand", ["mask4", "square"], ["expanded"], name="expand_mask"),
             helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["x", "xt"], ["scores"]),
             helper.make_node("Unsqueeze", ["scores", "axes1"], ["scores4"]),
             helper.make_node("Add", ["scores4", "expanded"], ["y"], name="add_mask")]
    return model(nodes, [tensor("x", [1, L, D]), tensor("attention_mask", [1, L])], [tensor("y", [1, 1, L, L])],
                 {"axes12": np.array([1, 2]), "axes1": np.array([1]), "square": np.array([1, 1, L, L])})


def test_a_mask_expanded_to_a_constant_shape_keeps_the_runtime_length():
    built = expanded_mask()
    rewritten, record = rewrite(built, "x:1:seq", "attention_mask:1:seq")
    assert dims(rewritten.graph.input) == [[1, "seq", D], [1, "seq"]]
    assert dims(rewritten.graph.output) == [[1, 1, "seq", "seq"]]
    assert record.details["inputs"] == ["x:1", "attention_mask:1"]
    assert any("node 'expand_mask' (Expand): shape entry 3 (6) bakes the export length 6; 1 keeps the runtime length"
               in line for line in record.details["rewritten"]), record.details
    mask = np.random.default_rng(3).integers(0, 2, (1, L)).astype(np.float32)
    assert_follows_length(built, rewritten, [floats(1, L, D), mask], {0: 1, 1: 1}, [[2, 3]])


def test_torchs_expand_to_a_shape_of_the_length_is_followed():
    # mask[:, None, :].expand(1, x.size(1), x.size(1)) as torch.onnx writes it: the sizes read from Shape(x), then
    # Where(Equal(shape, -1), ones, shape) (-1 keeps a dim), which no length from 1 to L ever equals
    nodes = [helper.make_node("Shape", ["x"], ["length"], start=1, end=2),
             helper.make_node("Concat", ["one", "length", "length"], ["shape"], axis=0),
             helper.make_node("Equal", ["shape", "minus_one"], ["keeps"]),
             helper.make_node("Where", ["keeps", "ones", "shape"], ["sizes"]),
             helper.make_node("Unsqueeze", ["attention_mask", "one"], ["mask3"]),
             helper.make_node("Cast", ["mask3"], ["mask3_float"], to=FLOAT),
             helper.make_node("Expand", ["mask3_float", "sizes"], ["expanded"], name="expand_mask"),
             helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["x", "xt"], ["scores"]),
             helper.make_node("Add", ["scores", "expanded"], ["y"], name="add_mask")]
    built = model(nodes, [tensor("x", [1, L, D]), tensor("attention_mask", [1, L], INT64)],
                  [tensor("y", [1, L, L])],
                  {"one": np.array([1]), "minus_one": np.array([-1]), "ones": np.array([1, 1, 1])})
    rewritten, record = rewrite(built, "x:1:seq", "attention_mask:1:seq")
    assert record.details["rewritten"] == []  # the shape already follows the length
    assert dims(rewritten.graph.output) == [[1, "seq", "seq"]]
    mask = np.random.default_rng(3).integers(0, 2, (1, L)).astype(np.int64)
    assert_follows_length(built, rewritten, [floats(1, L, D), mask], {0: 1, 1: 1}, [[1, 2]])


@pytest.mark.parametrize("length_of", ["gather scalar", "shape slice"])
def test_positions_from_range_over_the_shape_need_no_cut(length_of):
    # torch.arange(input_ids.size(1)): Shape, Gather of index 1 (a scalar), Range (or Shape<start=1, end=2>)
    if length_of == "gather scalar":
        count = [helper.make_node("Shape", ["input_ids"], ["shape"]),
                 helper.make_node("Gather", ["shape", "one"], ["count"], name="length", axis=0)]
        constants = {"one": np.array(1)}
    else:
        count = [helper.make_node("Shape", ["input_ids"], ["shape"], start=1, end=2),
                 helper.make_node("Squeeze", ["shape", "axis0"], ["count"])]
        constants = {"axis0": np.array([0])}
    nodes = [*count,
             helper.make_node("Range", ["zero", "count", "step"], ["positions"], name="arange"),
             helper.make_node("Unsqueeze", ["positions", "axis0"], ["positions2"]),
             helper.make_node("Gather", ["table", "positions2"], ["pos"], name="pos_emb"),
             helper.make_node("Gather", ["tokens", "input_ids"], ["tok"]),
             helper.make_node("Add", ["tok", "pos"], ["y"])]
    constants |= {"zero": np.array(0), "step": np.array(1), "axis0": np.array([0]), "table": weights(16, D),
                  "tokens": weights(V, D, seed=1)}
    built = model(nodes, [tensor("input_ids", [1, L], INT64)], [tensor("y", [1, L, D])], constants)
    rewritten, record = apply_pass_with_record("dynamic_axes", built, axes=["input_ids:1:seq"])
    assert record.details["rewritten"] == []  # nothing bakes L: the shapes are only named
    assert dims(rewritten.graph.output) == [[1, "seq", D]]
    assert_follows_length(built, rewritten, [ids()], {0: 1}, [[1]])


@pytest.mark.parametrize("end_of", ["shape slice", "gather unsqueezed"])
def test_a_buffer_sliced_to_the_input_length_takes_the_length_on(end_of):
    # self.position_ids[:, :input_ids.size(1)], a [1, 64] buffer
    if end_of == "shape slice":
        ends = [helper.make_node("Shape", ["input_ids"], ["ends"], start=1, end=2)]
    else:
        ends = [helper.make_node("Shape", ["input_ids"], ["shape"]),
                helper.make_node("Gather", ["shape", "one"], ["ends"], axis=0)]
    nodes = [*ends,
             helper.make_node("Slice", ["position_ids", "zero", "ends", "one"], ["positions"], name="cut_buffer"),
             helper.make_node("Gather", ["table", "positions"], ["pos"]),
             helper.make_node("Gather", ["tokens", "input_ids"], ["tok"]),
             helper.make_node("Add", ["tok", "pos"], ["y"])]
    built = model(nodes, [tensor("input_ids", [1, L], INT64)], [tensor("y", [1, L, D])],
                  {"position_ids": np.arange(64, dtype=np.int64).reshape(1, 64), "zero": np.array([0]),
                   "one": np.array([1]), "table": weights(64, D), "tokens": weights(V, D, seed=1)})
    rewritten, record = apply_pass_with_record("dynamic_axes", built, axes=["input_ids:1:seq"])
    assert record.details["rewritten"] == []
    assert dims(rewritten.graph.output) == [[1, "seq", D]]
    assert_follows_length(built, rewritten, [ids()], {0: 1}, [[1]])


def test_the_rank_read_from_a_shape_does_not_depend_on_the_length():
    # RMSNormalization's function: the axes reduced are Range(axis, Size(Shape(x))), the rank being no length
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Size", ["shape"], ["rank"]),
             helper.make_node("Range", ["last", "rank", "step"], ["axes"], name="reduce_axes"),
             helper.make_node("Mul", ["x", "x"], ["squares"]),
             helper.make_node("ReduceMean", ["squares", "axes"], ["mean_square"], keepdims=1),
             helper.make_node("Div", ["x", "mean_square"], ["y"])]
    built = model(nodes, [tensor("x", [1, L, D])], [tensor("y", [1, L, D])],
                  {"last": np.array(2), "step": np.array(1)}, opset=18)
    rewritten, _ = apply_pass_with_record("dynamic_axes", built, axes=["x:1:seq"])
    assert dims(rewritten.graph.output) == [[1, "seq", D]]
    assert_follows_length(built, rewritten, [floats(1, L, D)], {0: 1}, [[1]])


def test_a_concat_along_the_length_past_an_empty_cache():
    # torch.cat([past_key (empty at the first step), key], dim=1)
    nodes = [helper.make_node("Concat", ["past", "x"], ["keys"], name="cat_cache", axis=1),
             helper.make_node("Mul", ["keys", "two"], ["y"])]
    built = model(nodes, [tensor("x", [1, L, D])], [tensor("y", [1, L, D])],
                  {"past": np.zeros((1, 0, D), np.float32), "two": np.array(2, np.float32)})
    rewritten, _ = apply_pass_with_record("dynamic_axes", built, axes=["x:1:seq"])
    assert dims(rewritten.graph.output) == [[1, "seq", D]]
    assert_follows_length(built, rewritten, [floats(1, L, D)], {0: 1}, [[1]])


def test_a_token_mixing_matmul_cuts_its_weight():
    # MLP-Mixer: x.transpose(1, 2) @ W, W [L, N] mixing the tokens
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["xt", "mix"], ["y"], name="token_mix")]
    built = model(nodes, [tensor("x", [1, L, D])], [tensor("y", [1, D, 5])], {"mix": weights(L, 5)})
    rewritten, record = rewrite(built, "x:1:seq")
    assert record.details["rewritten"] == ["node 'token_mix' (MatMul): 'mix' has the export length 6 on axis 0; it "
                                           "is cut to the runtime length"]
    assert dims(rewritten.graph.output) == [[1, D, 5]]
    assert_follows_length(built, rewritten, [floats(1, L, D)], {0: 1}, [[]])


def test_reductions_over_the_width_keep_the_length_and_a_sum_over_it_ignores_the_padding():
    nodes = [helper.make_node("ReduceMean", ["x"], ["mean"], axes=[2], keepdims=0),
             helper.make_node("ReduceSum", ["x", "axis1"], ["total"], keepdims=1)]
    built = model(nodes, [tensor("x", [1, L, D])], [tensor("mean", [1, L]), tensor("total", [1, 1, D])],
                  {"axis1": np.array([1])})
    rewritten, _ = apply_pass_with_record("dynamic_axes", built, axes=["x:1:seq"])
    assert dims(rewritten.graph.output) == [[1, "seq"], [1, 1, D]]
    assert_follows_length(built, rewritten, [floats(1, L, D)], {0: 1}, [[1], []])


@pytest.mark.parametrize("keepdims, total_dims", [(1, [1, 1, 1]), (0, [])])
def test_a_reduction_with_empty_axes_reduces_every_axis_the_length_among_them(keepdims, total_dims):
    # x + x.sum(dim=(), keepdim=...) at opset 13: the axes input present but empty reduces every axis, so the
    # total holds no length (a sum, which the padding's zeros leave alone)
    nodes = [helper.make_node("ReduceSum", ["x", "no_axes"], ["total"], name="sum_all", keepdims=keepdims),
             helper.make_node("Add", ["x", "total"], ["y"])]
    built = model(nodes, [tensor("x", [1, L, D])], [tensor("y", [1, L, D]), tensor("total", total_dims)],
                  {"no_axes": np.array([], np.int64)}, opset=13)
    rewritten, _ = rewrite(built, "x:1:seq")
    assert dims(rewritten.graph.output) == [[1, "seq", D], total_dims]
    assert_follows_length(built, rewritten, [floats(1, L, D)], {0: 1}, [[1], []])


def test_a_batch_already_dynamic_stays_dynamic():
    nodes = [helper.make_node("Gather", ["tokens", "input_ids"], ["tok"]),
             helper.make_node("Gather", ["table", "positions"], ["pos"], name="pos_emb"),
             helper.make_node("Add", ["tok", "pos"], ["y"])]
    built = model(nodes, [tensor("input_ids", ["batch", L], INT64)], [tensor("y", ["batch", L, D])],
                  {"tokens": weights(V, D), "table": weights(16, D, seed=1),
                   "positions": np.arange(L, dtype=np.int64).reshape(1, L)})
    rewritten, _ = rewrite(built, "input_ids:1:seq")
    assert dims(rewritten.graph.input) == [["batch", "seq"]]
    assert dims(rewritten.graph.output) == [["batch", "seq", D]]
    for batch in (1, 3):
        assert_follows_length(built, rewritten, [ids(batch)], {0: 1}, [[1]])


def test_an_lstm_over_the_length_keeps_it_in_y():
    # nn.LSTM(batch_first=True) as torch exports it: steps first (onnxruntime runs only layout 0), then back
    hidden, width = 5, 3
    nodes = [helper.make_node("Transpose", ["x"], ["steps"], perm=[1, 0, 2]),
             helper.make_node("LSTM", ["steps", "w", "r", "b"], ["seq_out"], name="lstm", hidden_size=hidden),
             helper.make_node("Squeeze", ["seq_out", "axis1"], ["squeezed"]),
             helper.make_node("Transpose", ["squeezed"], ["y"], perm=[1, 0, 2])]
    built = model(nodes, [tensor("x", [1, L, width])], [tensor("y", [1, L, hidden])],
                  {"w": weights(1, 4 * hidden, width), "r": weights(1, 4 * hidden, hidden, seed=1),
                   "b": weights(1, 8 * hidden, seed=2), "axis1": np.array([1])})
    rewritten, _ = apply_pass_with_record("dynamic_axes", built, axes=["x:1:seq"])
    assert dims(rewritten.graph.output) == [[1, "seq", hidden]]
    assert_follows_length(built, rewritten, [floats(1, L, width)], {0: 1}, [[1]])


def test_the_last_state_of_an_lstm_does_not_hold_the_length():
    # Y_h, the state after the last step, is no axis of the length: at S it is the state after step S
    hidden, width = 5, 3
    nodes = [helper.make_node("Transpose", ["x"], ["steps"], perm=[1, 0, 2]),
             helper.make_node("LSTM", ["steps", "w", "r"], ["", "last"], name="lstm", hidden_size=hidden)]
    built = model(nodes, [tensor("x", [1, L, width])], [tensor("last", [1, 1, hidden])],
                  {"w": weights(1, 4 * hidden, width), "r": weights(1, 4 * hidden, hidden, seed=1)})
    rewritten, _ = apply_pass_with_record("dynamic_axes", built, axes=["x:1:seq"])
    assert dims(rewritten.graph.output) == [[1, 1, hidden]]
    full = floats(1, L, width)
    (at_length,) = run_onnx(rewritten, [full])
    np.testing.assert_array_equal(at_length, run_onnx(built, [full])[0])
    (shorter,) = run_onnx(rewritten, [full[:, :3]])
    assert shorter.shape == (1, 1, hidden) and not np.allclose(shorter, at_length)


def test_an_input_whose_first_axis_is_not_the_batch_is_observed():
    # a [D] bias fed as an input: running the model at the export length must feed it as declared
    built = model([helper.make_node("Add", ["x", "bias"], ["y"], name="add_bias")],
                  [tensor("x", [1, L, D]), tensor("bias", [D])], [tensor("y", [1, L, D])])
    rewritten, _ = apply_pass_with_record("dynamic_axes", built, axes=["x:1:seq"])
    assert dims(rewritten.graph.output) == [[1, "seq", D]]
    assert_follows_length(built, rewritten, [floats(1, L, D), floats(D, seed=5)], {0: 1}, [[1]])


@pytest.mark.parametrize("build, axes", [
    (folded_positions, ["input_ids:1:seq"]),
    (lambda: attention(mask=True), ["x:1:seq"]),
    (expanded_mask, ["x:1:seq", "attention_mask:1:seq"]),
], ids=["positions", "attention", "expanded mask"])
def test_the_pass_is_idempotent(build, axes):
    assert_idempotent("dynamic_axes", build(), axes=axes)
    once = apply_pass("dynamic_axes", build(), axes=axes)
    _, record = apply_pass_with_record("dynamic_axes", once, axes=axes)
    assert not record.changed and record.details is None


# -- what does not follow: refused, naming the node and why


def x_model(nodes: list[onnx.NodeProto], out: Sequence[int], constants=None, **kwargs) -> onnx.ModelProto:
    return model(nodes, [tensor("x", [1, L, D])], [tensor("y", out)], constants, **kwargs)


def growing_concat():
    return x_model([helper.make_node("Concat", ["x", "extra"], ["y"], name="grow", axis=1)], [1, L + 2, D],
                   {"extra": weights(1, 2, D)})


def padded_along():
    return x_model([helper.make_node("Pad", ["x", "pads"], ["y"], name="pad_right")], [1, L + 1, D],
                   {"pads": np.array([0, 0, 0, 0, 1, 0])})


def split_along():
    return model([helper.make_node("Split", ["x", "parts"], ["a", "b"], name="halves", axis=1)],
                 [tensor("x", [1, L, D])], [tensor("a", [1, 3, D]), tensor("b", [1, 3, D])],
                 {"parts": np.array([3, 3])})


def sliced_to_a_fixed_part():
    # x[:, :L - 1] with the end a constant
    return x_model([helper.make_node("Slice", ["x", "zero", "end", "one"], ["y"], name="drop_last")], [1, L - 1, D],
                   {"zero": np.array([0]), "end": np.array([L - 1]), "one": np.array([1])})


def conv_over_it():
    return model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv1d", pads=[1, 1])],
                 [tensor("x", [1, D, L])], [tensor("y", [1, 4, L])], {"w": weights(4, D, 3)})


def topk_along():
    return model([helper.make_node("TopK", ["x", "k"], ["y", "where"], name="top2", axis=1)],
                 [tensor("x", [1, L, D])], [tensor("y", [1, 2, D]), tensor("where", [1, 2, D], INT64)],
                 {"k": np.array([2])})


def custom_domain():
    return x_model([helper.make_node("Gelu", ["x"], ["y"], name="fast_gelu", domain="com.microsoft")], [1, L, D],
                   domains=[("com.microsoft", 1)])


def layer_norm_statistics():
    node = helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y", "mean"], name="ln", axis=-1)
    return model([node], [tensor("x", [1, L, D])], [tensor("y", [1, L, D]), tensor("mean", [1, L, 1])],
                 {"gamma": weights(D), "beta": weights(D, seed=1)})


def if_capturing():
    then = helper.make_graph([helper.make_node("Neg", ["x"], ["t"])], "then", [], [tensor("t", [1, L, D])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [tensor("e", [1, L, D])])
    node = helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=then, else_branch=other)
    return model([node], [tensor("x", [1, L, D]), tensor("flag", [], TensorProto.BOOL)], [tensor("y", [1, L, D])])


def loop_capturing():
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "x"], ["v_out"])],
        "body", [tensor("i", [], INT64), tensor("cond_in", [], TensorProto.BOOL), tensor("v_in", [1, L, D])],
        [tensor("cond_out", [], TensorProto.BOOL), tensor("v_out", [1, L, D])])
    node = helper.make_node("Loop", ["trips", "", "x"], ["y"], name="twice", body=body)
    return x_model([node], [1, L, D], {"trips": np.array(2)})


REFUSED = {
    "concat growing the length": (growing_concat, "x:1:seq",
                                  "node 'grow' (Concat) concatenates along the length; dynamic_axes does not follow a "
                                  "length that grows"),
    "pad along the length": (padded_along, "x:1:seq", "node 'pad_right' (Pad) pads along the length (axis 1)"),
    "split along the length": (split_along, "x:1:seq", "node 'halves' (Split) splits along the length"),
    "slice to a fixed part": (sliced_to_a_fixed_part, "x:1:seq",
                              "node 'drop_last' (Slice) cuts the length (axis 1) to a fixed part"),
    "conv over the length": (conv_over_it, "x:2:seq",
                             "node 'conv1d' (Conv) dynamic_axes does not know how the length flows through Conv"),
    "topk along the length": (topk_along, "x:1:seq",
                              "node 'top2' (TopK) dynamic_axes does not know how the length flows through TopK"),
    "an op of a custom domain": (custom_domain, "x:1:seq",
                                 "node 'fast_gelu' (Gelu) dynamic_axes does not know how the length flows"),
    "layer norm statistics used": (layer_norm_statistics, "x:1:seq",
                                   "node 'ln' (LayerNormalization) output 'mean' (the statistics) is used"),
    "an if capturing the length": (if_capturing, "x:1:seq",
                                   "node 'branch' (If) uses a tensor that holds the length inside a subgraph"),
    "a loop capturing the length": (loop_capturing, "x:1:seq",
                                    "node 'twice' (Loop) uses a tensor that holds the length inside a subgraph"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_does_not_follow_the_length_is_refused_by_node(case):
    build, axis, message = REFUSED[case]
    message_got = refusal(build(), axis)
    assert message_got.startswith(f"plugin 'dynamic_axes': {message}"), message_got


def test_an_arange_cast_on_its_way_to_data_of_its_width_stays_the_width():
    # x + torch.arange(L).float() with the width of x equal to L: through the Cast the arange still meets x on its
    # width, not on the length, so it stays whole and x is never cut; naming the width too makes both follow
    nodes = [helper.make_node("Cast", ["offsets"], ["offsets_float"], to=FLOAT),
             helper.make_node("Add", ["x", "offsets_float"], ["y"], name="add_offsets")]
    built = model(nodes, [tensor("x", [1, L, L])], [tensor("y", [1, L, L])],
                  {"offsets": np.arange(L, dtype=np.int64)})
    rewritten, record = rewrite(built, "x:1:seq")
    assert record.details["rewritten"] == []
    assert dims(rewritten.graph.output) == [[1, "seq", L]]
    assert_follows_length(built, rewritten, [floats(1, L, L)], {0: 1}, [[1]])
    rewritten, _ = rewrite(built, "x:1:seq", "x:2:seq")
    assert dims(rewritten.graph.input) == [[1, "seq", "seq"]]
    assert_follows_length(built, rewritten, [floats(1, L, L)], {0: (1, 2)}, [[1, 2]])


def test_an_input_cut_to_meet_the_length_is_refused_with_how_to_name_its_axis():
    # x + y, both [1, L, L], only x's axis 1 named: y would have to be cut on its axis 1, which the caller sends
    nodes = [helper.make_node("Add", ["x", "y"], ["z"], name="add")]
    built = model(nodes, [tensor("x", [1, L, D]), tensor("y", [1, L, D])], [tensor("z", [1, L, D])])
    message = refusal(built, "x:1:seq")
    assert message.startswith("plugin 'dynamic_axes': node 'add' (Add) combines the input 'y', 6 long on axis 1, "
                              "with the length there"), message
    assert "name it in axes (y:1:NAME)" in message, message
    rewritten, _ = rewrite(built, "x:1:seq", "y:1:seq")
    assert_follows_length(built, rewritten, [floats(1, L, D), floats(1, L, D)], {0: 1, 1: 1}, [[1]])


# -- the options


def two_inputs(first: int = L, second: int = L) -> onnx.ModelProto:
    return model([helper.make_node("ReduceSum", ["mask", "axis1"], ["total"], keepdims=0),
                  helper.make_node("Add", ["x", "total"], ["y"])],
                 [tensor("x", [1, first, D]), tensor("mask", [1, second, 1])], [tensor("y", [1, first, D])],
                 {"axis1": np.array([1])})


@pytest.mark.parametrize("built, axes, error, message", [
    (two_inputs(), ["x:1:seq", "mask:1:len"], UsageError, r"axes: one name at a time \(got len, seq\)"),
    (two_inputs(), ["x:0:seq"], UsageError, r"axis 0 is the batch"),
    (two_inputs(), ["x:1:batch"], UsageError, r"the name must be a word such as seq, and not 'batch'"),
    (two_inputs(), ["x-1-seq"], UsageError, r"expected INPUT:AXIS:NAME"),
    (two_inputs(), [], SurgeonError, r"axes: name the axes to make dynamic"),
    (two_inputs(), ["ids:1:seq"], SurgeonError, r"axes: the model has no input 'ids' \(its inputs: x, mask\)"),
    (two_inputs(), ["x:3:seq"], SurgeonError, r"axes: input 'x' has no axis 3 \(shape \[1, 6, 8\]\)"),
    (two_inputs(1, 1), ["x:1:seq"], SurgeonError, r"the model was exported at seq 1, which leaves nothing to follow"),
    (two_inputs(L, 4), ["x:1:seq", "mask:1:seq"], SurgeonError,
     r"axes: the axes named 'seq' differ in size \(x:1 is 6, mask:1 is 4\)"),
    (model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [1, L])], [tensor("y", [1, L])], opset=10),
     ["x:1:seq"], SurgeonError, r"the model is at opset 10; dynamic_axes needs opset 11 or later"),
], ids=["two names", "axis 0", "the batch's name", "not INPUT:AXIS:NAME", "no axes", "no such input",
        "axis out of range", "exported at length 1", "different lengths", "opset 10"])
def test_wrong_options_are_refused_in_words(built, axes, error, message):
    with pytest.raises(error, match=message):
        apply_pass("dynamic_axes", built, axes=axes)


def test_axes_already_dynamic_leave_the_model_unchanged():
    built = model([helper.make_node("Add", ["x", "pos_embed"], ["y"])], [tensor("x", [1, "seq", D])],
                  [tensor("y", [1, "seq", D])], {"pos_embed": weights(1, 1, D)})
    rewritten, record = apply_pass_with_record("dynamic_axes", built, axes=["x:1:seq"])
    assert not record.changed, record
    assert rewritten.graph == built.graph


def test_an_input_already_dynamic_is_left_as_it_is_beside_one_made_dynamic():
    # the mask already dynamic, x fixed: x's length is followed and named; the mask is left as it is
    built = model([helper.make_node("Add", ["x", "pos_embed"], ["y"])], [tensor("x", [1, L, D]),
                  tensor("mask", [1, "seq"])], [tensor("y", [1, L, D])], {"pos_embed": weights(1, L, D)})
    rewritten, record = rewrite(built, "x:1:seq", "mask:1:seq")
    assert record.details["inputs"] == ["x:1"]
    assert dims(rewritten.graph.input) == [[1, "seq", D], [1, "seq"]]


def test_two_axes_of_one_input_both_follow():
    # scores = x @ x.transpose(1, 2) + mask, the mask an input [1, L, L] with both axes named
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["x", "xt"], ["scores"]),
             helper.make_node("Add", ["scores", "mask"], ["y"], name="add_mask")]
    built = model(nodes, [tensor("x", [1, L, D]), tensor("mask", [1, L, L])], [tensor("y", [1, L, L])])
    rewritten, record = rewrite(built, "x:1:seq", "mask:1:seq", "mask:2:seq")
    assert record.details["inputs"] == ["x:1", "mask:1", "mask:2"]
    assert record.details["rewritten"] == []  # an input is named, never cut
    assert dims(rewritten.graph.input) == [[1, "seq", D], [1, "seq", "seq"]]
    assert dims(rewritten.graph.output) == [[1, "seq", "seq"]]
    mask = np.triu(np.full((1, L, L), -1e4, np.float32), 1) + floats(1, L, L, seed=6)
    assert_follows_length(built, rewritten, [floats(1, L, D), mask], {0: 1, 1: (1, 2)}, [[1, 2]])


def test_a_name_the_model_already_uses_for_another_dim_is_refused():
    # x [N, L, D] with N its batch: naming the length N too would tie two unrelated dims together
    built = model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", ["N", L, D])], [tensor("y", ["N", L, D])])
    message = refusal(built, "x:1:N")
    assert "axes: the model already names 'x' axis 0 'N'; the length needs a name of its own" in message, message


def test_after_dynamic_axes_dynamic_batch_says_to_run_first(tmp_path):
    import surgeon

    nodes = [helper.make_node("Reshape", ["x", "heads"], ["y"], name="split_heads")]
    onnx.save(model(nodes, [tensor("x", [1, L, D])], [tensor("y", [1, L, 2, 4])], {"heads": np.array([1, L, 2, 4])}),
              tmp_path / "m.onnx")
    options = {"dynamic_axes": {"axes": ["x:1:seq"]}}
    with pytest.raises(SurgeonError) as raised:
        surgeon.run(tmp_path / "m.onnx", tmp_path / "out", formats=["onnx"], plugins=["dynamic_axes", "dynamic_batch"],
                    options=options)
    assert "plugin 'dynamic_batch'" in str(raised.value)
    assert "run it before dynamic_axes (--plugins dynamic_batch,dynamic_axes,...)" in str(raised.value)
    assert not (tmp_path / "out").exists()
    report = surgeon.run(tmp_path / "m.onnx", tmp_path / "out", formats=["onnx"],
                         plugins=["dynamic_batch", "dynamic_axes"], options=options, batch_sizes=[1, 3])
    assert {(row["batch"], row["sizes"]["seq"]) for row in report["parity"]} == {
        (batch, length) for batch in (1, 3) for length in (2, 3, 6)}
    assert all(row["ok"] for row in report["parity"])


def test_two_lengths_compared_with_each_other_are_always_equal():
    # if x.size(1) == mask.size(1): traced as an Equal of two lengths feeding a Where on a shape entry
    nodes = [helper.make_node("Shape", ["x"], ["x_length"], start=1, end=2),
             helper.make_node("Shape", ["mask"], ["mask_length"], start=1, end=2),
             helper.make_node("Equal", ["x_length", "mask_length"], ["same"]),
             helper.make_node("Where", ["same", "x_length", "mask_length"], ["length"]),
             helper.make_node("Concat", ["one", "length", "width"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")]
    built = model(nodes, [tensor("x", [1, L, D]), tensor("mask", [1, L], INT64)], [tensor("y", [1, L, D])],
                  {"one": np.array([1]), "width": np.array([D])})
    rewritten, _ = rewrite(built, "x:1:seq", "mask:1:seq")
    assert dims(rewritten.graph.output) == [[1, "seq", D]]
    assert_follows_length(built, rewritten, [floats(1, L, D), np.ones((1, L), np.int64)], {0: 1, 1: 1}, [[1]])


# -- widths that happen to equal the length (found by trying real and synthetic text models)


def pooled(by_matmul: bool) -> onnx.ModelProto:
    """Mean pooling as sentence-transformers writes it, the hidden size H equal to L: the mask expanded to
    ``h.size()`` (folded to [1, L, L]) weighs the tokens; or the expanded mask transposed and multiplied in."""
    nodes = [helper.make_node("Unsqueeze", ["attention_mask", "last"], ["mask3"]),
             helper.make_node("Cast", ["mask3"], ["mask_float"], to=FLOAT),
             helper.make_node("Expand", ["mask_float", "h_size"], ["weights"], name="expand_mask"),
             helper.make_node("Tanh", ["h"], ["hidden"])]
    if by_matmul:
        nodes += [helper.make_node("Transpose", ["weights"], ["weights_t"], perm=[0, 2, 1]),
                  helper.make_node("MatMul", ["weights_t", "hidden"], ["y"], name="pool")]
        output = tensor("y", [1, L, L])
    else:
        nodes += [helper.make_node("Mul", ["hidden", "weights"], ["weighted"], name="weigh"),
                  helper.make_node("ReduceSum", ["weighted", "axis1"], ["total"], keepdims=0),
                  helper.make_node("ReduceSum", ["weights", "axis1"], ["count"], keepdims=0),
                  helper.make_node("Div", ["total", "count"], ["y"])]
        output = tensor("y", [1, L])
    return model(nodes, [tensor("h", [1, L, L]), tensor("attention_mask", [1, L], INT64)], [output],
                 {"last": np.array([-1]), "h_size": np.array([1, L, L]), "axis1": np.array([1])})


@pytest.mark.parametrize("by_matmul", [False, True], ids=["mean", "matmul"])
def test_a_mask_expanded_to_a_width_of_the_length_keeps_the_width(by_matmul):
    # the folded [1, L, L] is [1, tokens, hidden]: the expanded axis repeats one value per token, and the hidden
    # size stays whole, in the weighting (cut exactly, copies) and in the output
    built = pooled(by_matmul)
    rewritten, _ = rewrite(built, "h:1:seq", "attention_mask:1:seq")
    assert dims(rewritten.graph.output) == [[1, L, L] if by_matmul else [1, L]]
    mask = np.ones((1, L), np.int64)
    mask[0, 3] = 0
    assert_follows_length(built, rewritten, [floats(1, L, L), mask], {0: 1, 1: 1}, [[]])


def test_a_one_hot_of_a_prediction_over_classes_of_the_length_keeps_its_arange():
    # pred = logits.mean(1).argmax(-1); (pred[:, None] == torch.arange(C)) with C == L classes
    nodes = [helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1], keepdims=0),
             helper.make_node("ArgMax", ["mean"], ["pred"], axis=1, keepdims=1),
             helper.make_node("Equal", ["pred", "classes"], ["hot"], name="one_hot"),
             helper.make_node("Cast", ["hot"], ["y"], to=FLOAT)]
    built = model(nodes, [tensor("x", [1, L, L])], [tensor("y", [1, L])], {"classes": np.arange(L, dtype=np.int64)})
    rewritten, record = rewrite(built, "x:1:seq")
    assert record.details["rewritten"] == []
    assert dims(rewritten.graph.output) == [[1, L]]
    (y,) = run_onnx(rewritten, [floats(1, L, L)[:, :3]])
    assert y.shape == (1, L) and y.sum() == 1


def test_an_expand_to_a_shape_read_from_the_graph_keeps_a_width_of_the_length():
    # Llama's repeat_kv: k[:, :, None].expand(b, kv_heads, 2, seq, head_dim) with sizes read by Shape, head_dim == L
    nodes = [helper.make_node("Reshape", ["x", "heads"], ["k"], name="split_heads"),
             helper.make_node("Shape", ["k"], ["k_shape"]),
             helper.make_node("Slice", ["k_shape", "zero", "two"], ["leading"]),
             helper.make_node("Slice", ["k_shape", "two", "four"], ["trailing"]),
             helper.make_node("Concat", ["leading", "repeats", "trailing"], ["sizes"], axis=0),
             helper.make_node("Unsqueeze", ["k", "two"], ["k5"]),
             helper.make_node("Expand", ["k5", "sizes"], ["y"], name="repeat_kv")]
    built = model(nodes, [tensor("x", [1, L, L])], [tensor("y", [1, 1, 2, L, L])],
                  {"heads": np.array([1, 1, L, L]), "zero": np.array([0]), "two": np.array([2]),
                   "four": np.array([4]), "repeats": np.array([2])})
    rewritten, _ = rewrite(built, "x:1:seq")
    assert dims(rewritten.graph.output) == [[1, 1, 2, "seq", L]]
    assert_follows_length(built, rewritten, [floats(1, L, L)], {0: 1}, [[3]])


def test_a_bfloat16_weight_of_the_length_s_size_is_no_positions_and_no_crash():
    # numpy has no bfloat16: onnx-graphsurgeon keeps the ONNX type number, which the positions check must survive
    nodes = [helper.make_node("Cast", ["scale"], ["scale_float"], to=FLOAT),
             helper.make_node("Mul", ["x", "scale_float"], ["y"])]
    scale = helper.make_tensor("scale", TensorProto.BFLOAT16, [L], [1.0 + k for k in range(L)])
    graph = helper.make_graph(nodes, "bf16", [tensor("x", [1, L, L])], [tensor("y", [1, L, L])], [scale])
    built = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    rewritten, _ = rewrite(built, "x:1:seq")
    assert dims(rewritten.graph.output) == [[1, "seq", L]]
    assert_follows_length(built, rewritten, [floats(1, L, L)], {0: 1}, [[1]])
