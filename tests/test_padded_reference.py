"""The padded reference: an axis a rewrite made dynamic (``seq``) where the ONNX file fixes a length L is checked
against onnxruntime on the source model given the input padded with zeros to L, cut back to the length fed;
lengths over L are refused before anything is written, and by default L // 2 and L are checked."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import surgeon
from surgeon.errors import SurgeonError
from surgeon.feeds import Case, FixedAxis, case_feed, cases, fixed_axes, fixed_sizes, sizes_checked_by_default
from surgeon.fuzzing import cli_in_process
from surgeon.pipeline import verified_cases
from surgeon.verify import refuse_longer_than_fixed, reference_outputs, reference_runner, zero_padded

LENGTH = 6  # the length the source models fix
SOURCE = "onnxruntime on the source model, inputs padded with zeros to its fixed seq 6"

NAME_SEQ_PASS = """
from surgeon import RewritePass, hookimpl


def name_seq(graph, options):
    for tensor in [*graph.inputs, *graph.outputs]:
        if len(tensor.shape) > 1:
            tensor.shape = [tensor.shape[0], "seq", *tensor.shape[2:]]


@hookimpl
def surgeon_passes():
    return [RewritePass(name="name_seq", doc="Names axis 1 of every input and output seq.", run=name_seq)]
"""


def model(nodes: list[onnx.NodeProto], inputs: list[tuple[str, int, list]], outputs: list[tuple[str, int, list]],
          initializers: list[onnx.TensorProto] = ()) -> onnx.ModelProto:
    """A one-graph model of ``nodes``; inputs and outputs as (name, element type, shape)."""
    graph = helper.make_graph(nodes, "padded", [helper.make_tensor_value_info(*value) for value in inputs],
                              [helper.make_tensor_value_info(*value) for value in outputs], list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


AXIS_1 = helper.make_tensor("axis", TensorProto.INT64, [], [1])
AXES_1 = helper.make_tensor("axes", TensorProto.INT64, [1], [1])


def cumsum(batch: int | str = 1, seq: int | str = LENGTH) -> onnx.ModelProto:
    """y = CumSum(x) along axis 1: causal, a prefix's outputs do not depend on what follows."""
    return model([helper.make_node("CumSum", ["x", "axis"], ["y"])], [("x", TensorProto.FLOAT, [batch, seq])],
                 [("y", TensorProto.FLOAT, [batch, seq])], [AXIS_1])


def total(seq: int | str = LENGTH) -> onnx.ModelProto:
    """y = the sum of x along axis 1, with no axis of its length: padding zeros is inert for a sum."""
    return model([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
                 [("x", TensorProto.FLOAT, [1, seq])], [("y", TensorProto.FLOAT, [1])], [AXES_1])


def masked(seq: int | str = LENGTH) -> onnx.ModelProto:
    """y = x * mask, and count = how many ones the mask holds: any padding of the mask but zeros changes it."""
    nodes = [helper.make_node("Cast", ["mask"], ["mask_float"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "mask_float"], ["y"]),
             helper.make_node("ReduceSum", ["mask", "axes"], ["count"], keepdims=0)]
    return model(nodes, [("x", TensorProto.FLOAT, [1, seq]), ("mask", TensorProto.INT64, [1, seq])],
                 [("y", TensorProto.FLOAT, [1, seq]), ("count", TensorProto.INT64, [1])], [AXES_1])


def prefix(seq: int | str = 3) -> onnx.ModelProto:
    """y = the first 3 values of x [1, 6]: an output whose length is not the input's."""
    starts, ends = (helper.make_tensor(name, TensorProto.INT64, [1], [value]) for name, value in (("starts", 0),
                                                                                                  ("ends", 3)))
    return model([helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"])],
                 [("x", TensorProto.FLOAT, [1, LENGTH])], [("y", TensorProto.FLOAT, [1, seq])], [starts, ends, AXES_1])


def centered(seq: int | str = LENGTH) -> onnx.ModelProto:
    """y = x minus its mean along axis 1: padding is not inert, every value depends on the length."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1], keepdims=1),
             helper.make_node("Sub", ["x", "mean"], ["y"])]
    return model(nodes, [("x", TensorProto.FLOAT, [1, seq])], [("y", TensorProto.FLOAT, [1, seq])])


def with_seq_input(source: onnx.ModelProto) -> onnx.ModelProto:
    """``source`` with axis 1 of its first input named seq, its outputs left as they are."""
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(source)
    rewritten.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "seq"
    return rewritten


def reference(source: onnx.ModelProto, rewritten: onnx.ModelProto, feed: list[np.ndarray]) -> list[np.ndarray]:
    """What the reference computes for ``feed``, checking that it says how it pads."""
    run, what = reference_runner(source, rewritten, None, [])
    assert what == SOURCE
    return run([feed])[0]


def test_a_causal_output_is_the_prefix_of_the_padded_run() -> None:
    x = np.arange(1, 5, dtype=np.float32).reshape(1, 4)
    (y,) = reference(cumsum(), cumsum(seq="seq"), [x])
    np.testing.assert_array_equal(y, [[1, 3, 6, 10]])


def test_an_output_without_the_axis_is_not_cut() -> None:
    x = np.arange(1, 5, dtype=np.float32).reshape(1, 4)
    (y,) = reference(total(), total("seq"), [x])
    np.testing.assert_array_equal(y, [10])


def test_every_input_on_the_axis_is_padded_with_zeros_of_its_dtype() -> None:
    x = np.arange(1, 5, dtype=np.float32).reshape(1, 4)
    mask = np.array([[1, 0, 1, 1]], dtype=np.int64)
    y, count = reference(masked(), masked("seq"), [x, mask])
    np.testing.assert_array_equal(y, [[1, 0, 3, 4]])
    assert count.tolist() == [3]  # padding with anything but zeros would count more
    padded = zero_padded([x, mask], fixed_axes(masked(), masked("seq")))
    assert [(array.dtype, array.shape) for array in padded] == [(np.float32, (1, 6)), (np.int64, (1, 6))]
    assert padded[1].tolist() == [[1, 0, 1, 1, 0, 0]]


def test_a_fixed_batch_repeats_each_sample_of_the_padded_input() -> None:
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    (y,) = reference(cumsum(), cumsum("batch", "seq"), [x])
    assert y.shape == (3, 4)
    np.testing.assert_allclose(y, np.cumsum(x, axis=1), rtol=1e-6)


def test_the_batch_axis_is_not_padded_and_only_named_fixed_axes_are() -> None:
    assert fixed_axes(cumsum(), cumsum("batch", "seq")) == [FixedAxis(input=0, axis=1, name="seq", size=LENGTH)]
    assert fixed_axes(cumsum(), cumsum("batch", LENGTH)) == []
    assert fixed_axes(cumsum(seq="seq"), cumsum(seq="seq")) == []  # dynamic in the source already: nothing to pad


def test_one_name_fixed_at_two_lengths_is_refused() -> None:
    source = model([helper.make_node("Identity", ["a"], ["y"]), helper.make_node("Identity", ["b"], ["z"])],
                   [("a", TensorProto.FLOAT, [1, 6]), ("b", TensorProto.FLOAT, [1, 8])],
                   [("y", TensorProto.FLOAT, [1, 6]), ("z", TensorProto.FLOAT, [1, 8])])
    rewritten = with_seq_input(source)
    rewritten.graph.input[1].type.tensor_type.shape.dim[1].dim_param = "seq"
    with pytest.raises(SurgeonError, match="names axes of its inputs 'seq' that the source model fixes at 6 and at 8"):
        fixed_sizes(source, rewritten)


def test_an_output_declared_with_the_name_but_of_another_length_is_refused() -> None:
    run, what = reference_runner(prefix(), with_seq_input(prefix("seq")), None, [])
    feeds = {Case(1, (("seq", 4),)): [np.ones((1, 4), np.float32)]}
    with pytest.raises(SurgeonError) as raised:
        reference_outputs(run, what, feeds)
    assert str(raised.value).startswith(
        "verification: output 'y' of the rewritten model declares axis 1 as seq, but the source model, run at its "
        "fixed seq 6, gives it shape [1, 3]: the output cannot be cut to the seq fed")
    assert "the rewrite names an output axis seq that does not follow the inputs' seq" in str(raised.value)


def test_a_pytorch_reference_is_fed_unpadded() -> None:
    def doubled(feed: list[np.ndarray]) -> list[np.ndarray]:
        return [feed[0] * 2]

    run, what = reference_runner(cumsum(), cumsum(seq="seq"), (doubled, "the PyTorch model"), [])
    (y,) = run([[np.ones((1, 4), np.float32)]])[0]
    assert what == "the PyTorch model" and y.tolist() == [[2, 2, 2, 2]]


def test_a_length_over_the_fixed_one_is_refused_in_words() -> None:
    refuse_longer_than_fixed({"seq": [3, 6]}, {"seq": LENGTH})  # up to the fixed length: checked
    refuse_longer_than_fixed({"other": [32]}, {"seq": LENGTH})  # a name the source does not fix: any length
    with pytest.raises(SurgeonError) as raised:
        refuse_longer_than_fixed({"seq": [4, 32, 64]}, {"seq": 16})
    assert str(raised.value) == (
        "--axis-sizes seq=32: the ONNX file fixes seq at 16, and nothing computes the original at a longer length "
        "(each length is checked against the original given the input padded with zeros to 16)\n"
        "  hint: ask for lengths up to 16, or export from PyTorch with --set torch.dynamic_axes=INPUT:AXIS:seq to "
        "check any length")


def run_context(axis_sizes: dict[str, list[int]], reference: object = None, verify: bool = True) -> SimpleNamespace:
    """What :func:`verified_cases` reads of a run: the cumsum model made dynamic along seq."""
    return SimpleNamespace(source_model=cumsum(), model=cumsum(seq="seq"), reference=reference, batch_sizes=None,
                           axis_sizes=axis_sizes, config=SimpleNamespace(verify=verify))


def test_only_a_reference_that_runs_at_the_fixed_length_alone_refuses_longer_ones() -> None:
    with pytest.raises(SurgeonError, match="--axis-sizes seq=8: the ONNX file fixes seq at 6"):
        verified_cases(run_context({"seq": [8]}))
    pytorch = (lambda feed: feed, "the PyTorch model")
    assert verified_cases(run_context({"seq": [8]}, reference=pytorch)) == [Case(1, (("seq", 8),))]
    assert verified_cases(run_context({"seq": [8]}, verify=False)) == [Case(1, (("seq", 8),))]


@pytest.mark.parametrize(("length", "checked"), [(16, [2, 8, 16]), (6, [2, 3, 6]), (3, [1, 2, 3]), (2, [1, 2]),
                                                 (1, [1])])
def test_a_fixed_length_is_checked_by_default_at_2_half_and_all_of_it(length: int, checked: list[int]) -> None:
    assert sizes_checked_by_default(length) == checked


def test_default_sizes_give_way_to_the_sizes_asked_for() -> None:
    rewritten = cumsum("batch", "seq")
    assert cases(rewritten, [1, 3], None, {"seq": LENGTH}) == [
        Case(batch, (("seq", length),)) for batch in (1, 3) for length in (2, 3, 6)]
    assert cases(rewritten, [1], {"seq": [2]}, {"seq": LENGTH}) == [Case(1, (("seq", 2),))]
    assert cases(rewritten, [1], None) == [Case(1)]  # nothing fixed in the source: SYMBOLIC_DIM_SIZE, as before
    assert case_feed(rewritten, Case(2, (("seq", 3),)))[0].shape == (2, 3)


@pytest.fixture
def name_seq(write_plugin) -> Path:
    return write_plugin("name_seq", NAME_SEQ_PASS)


def test_a_run_checks_the_fixed_length_and_shorter_ones_against_the_padded_source(tmp_path: Path,
                                                                                   name_seq: Path) -> None:
    onnx.save(cumsum(), tmp_path / "cumsum.onnx")
    report = surgeon.run(tmp_path / "cumsum.onnx", tmp_path / "out", formats=["onnx"], plugins=["name_seq"],
                         plugin_paths=[name_seq])
    assert report["reference"] == SOURCE
    assert sorted(row["sizes"]["seq"] for row in report["parity"]) == [2, 3, 6]
    assert all(row["ok"] for row in report["parity"])


def test_a_batch_made_dynamic_too_is_checked_at_each_batch_and_length(tmp_path: Path, name_seq: Path) -> None:
    onnx.save(cumsum(), tmp_path / "cumsum.onnx")
    report = surgeon.run(tmp_path / "cumsum.onnx", tmp_path / "out", formats=["onnx"],
                         plugins=["dynamic_batch", "name_seq"], plugin_paths=[name_seq])
    assert {(row["batch"], row["sizes"]["seq"], row["check"]) for row in report["parity"]} == {
        *((batch, length, check) for batch in (1, 3) for length in (2, 3, 6)
          for check in (("vs reference", "per-sample") if batch > 1 else ("vs reference",)))}
    assert all(row["ok"] for row in report["parity"])


def test_a_model_where_padding_is_not_inert_fails_at_the_shorter_length(tmp_path: Path, name_seq: Path) -> None:
    onnx.save(centered(), tmp_path / "centered.onnx")
    with pytest.raises(SurgeonError) as raised:
        surgeon.run(tmp_path / "centered.onnx", tmp_path / "out", formats=["onnx"], plugins=["name_seq"],
                    plugin_paths=[name_seq])
    assert "verification failed: stage 'onnx' at batch size 1 with seq 2" in str(raised.value)
    assert "it passes at batch size 1 with seq 6" in str(raised.value)
    hint = raised.value.hint or ""
    assert "padded with zeros to seq 6" in hint and "result changes with that" in hint, hint
    assert "the export likely baked" not in hint
    assert not (tmp_path / "out").exists()


def test_a_run_refuses_a_length_over_the_fixed_one_before_writing(tmp_path: Path, name_seq: Path) -> None:
    onnx.save(cumsum(), tmp_path / "cumsum.onnx")
    code, err = cli_in_process("run", tmp_path / "cumsum.onnx", "-o", tmp_path / "out", "--format", "onnx",
                               "--plugins", "name_seq", "--plugin-path", name_seq, "--axis-sizes", "seq=4,8")
    assert code != 0, err
    assert "--axis-sizes seq=8: the ONNX file fixes seq at 6, and nothing computes the original" in err
    assert "writing onnx" not in err and "Traceback" not in err and not (tmp_path / "out").exists()


def test_an_input_named_like_a_mask_is_fed_0s_and_1s_with_its_first_position_on() -> None:
    # a mask of 2s and 3s counts positions past the length (cumsum(mask) positions), and a sample masked whole
    # leaves attention with nothing to attend to: neither is a feed a model is checked on
    rewritten = with_seq_input(masked())
    for batch, length in ((1, 2), (3, 2), (8, 6)):
        x, mask = case_feed(rewritten, Case(batch, (("seq", length),)))
        assert set(np.unique(mask)) <= {0, 1} and (mask[:, 0] == 1).all(), mask
        assert mask.dtype == np.int64 and x.dtype == np.float32
    assert 0 in case_feed(rewritten, Case(8, (("seq", 6),)))[1]  # still a mask, not all ones
