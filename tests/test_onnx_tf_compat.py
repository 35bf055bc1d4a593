"""onnx-tf 1.10 on the installed stack, through surgeon's compatibility layer (surgeon_plugins/onnx_tf_compat.py).

The same tests run on both stacks CI installs (TensorFlow 2.21 + onnx 1.23, and TensorFlow 2.15 + onnx 1.18):
surgeon's stand-ins replace what onnx-tf imported from onnx.mapping, tensorflow_addons, tensorflow_probability and
Keras on both. Each stand-in is compared with what it replaces where that still exists, and each replaced piece is
run through the ONNX backend node cases that exercise it (or, where the onnx wheel has none with plain tensors,
small models checked against onnxruntime): converted by the real converter, and served from the SavedModel in a
fresh process through its serving signature.
"""

from __future__ import annotations

import importlib.metadata
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from surgeon.testing import apply_pass, backend_node_cases, model_from_text, run_onnx
from surgeon_plugins.converters.onnx_tf.compat import data_type_tables
from surgeon_plugins.converters.onnx_tf import OnnxTfOptions, check_servable, to_saved_model

TENSORFLOW = importlib.metadata.version("tensorflow")
# ONNX types TensorFlow has (the rest, float8, 4- and 2-bit types, have no TensorFlow dtype to cast to)
TENSORFLOW_TYPES = {TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT8, TensorProto.UINT16, TensorProto.INT16,
                    TensorProto.INT32, TensorProto.INT64, TensorProto.BOOL, TensorProto.FLOAT16, TensorProto.BFLOAT16,
                    TensorProto.DOUBLE, TensorProto.UINT32, TensorProto.UINT64, TensorProto.STRING}


# what TensorFlow 2.15 itself computes otherwise (the 2023 stack): not the layer's doing
TENSORFLOW_2_15_DIFFERS = {
    "test_cast_FLOAT_to_STRING": "TensorFlow 2.15 writes 6 significant digits, onnx the shortest exact form",
}


def in_tensorflow_types(model: onnx.ModelProto) -> bool:
    return all(value.type.tensor_type.elem_type in TENSORFLOW_TYPES
               for value in (*model.graph.input, *model.graph.output))


def serve_in_fresh_process(models: dict[str, tuple[Path, list[np.ndarray], list[str], list[str]]], tmp_path: Path):
    """Each SavedModel run once through its serving signature, all in one new process: name -> outputs or why not."""
    request, answer = tmp_path / "request.pickle", tmp_path / "answer.pickle"
    request.write_bytes(pickle.dumps(models))
    child = textwrap.dedent(f"""
        import pickle, sys
        from surgeon.serving import run
        results = {{}}
        for name, (path, feed, inputs, outputs) in pickle.loads(open({str(request)!r}, "rb").read()).items():
            try:
                results[name] = run(path, [feed], inputs, outputs)[0]
            except Exception as error:
                results[name] = f"{{type(error).__name__}}: {{error}}"
        open({str(answer)!r}, "wb").write(pickle.dumps(results))
    """)
    finished = subprocess.run([sys.executable, "-c", child], cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert finished.returncode == 0, finished.stderr[-2000:]
    return pickle.loads(answer.read_bytes())


def convert_and_serve(models: dict[str, tuple[onnx.ModelProto, list[np.ndarray]]], tmp_path: Path):
    """name -> (outputs of the served SavedModel, or why it failed to convert or serve).

    Each model goes through opset_compat first, as a user's would: the onnx wheel writes its cases at its newest
    operator versions (Cast-21 and later), which onnx-tf 1.10 predates.
    """
    served, results = {}, {}
    for name, (model, feed) in models.items():
        target = tmp_path / name
        try:
            model = apply_pass("opset_compat", model)
            to_saved_model(model, OnnxTfOptions(), target)
            check_servable(target, model)
        except Exception as error:
            results[name] = f"conversion: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            continue
        initializers = {tensor.name for tensor in model.graph.initializer}
        inputs = [value.name for value in model.graph.input if value.name not in initializers]
        served[name] = (target, feed, inputs, [value.name for value in model.graph.output])
    if served:
        results.update(serve_in_fresh_process(served, tmp_path))
    return results


def mismatches(results: dict, expected: dict[str, list[np.ndarray]], rtol=1e-4, atol=1e-5) -> dict[str, str]:
    """name -> why the served outputs are not the expected ones."""
    wrong = {}
    for name, want in expected.items():
        got = results[name]
        if isinstance(got, str):
            wrong[name] = got
            continue
        for index, (actual, reference) in enumerate(zip(got, want)):
            actual = np.asarray(actual)
            tolerance = (rtol, atol)
            if actual.dtype.kind == "V" or np.asarray(reference).dtype.kind == "V":  # bfloat16: one unit in the
                actual, reference = actual.astype(np.float32), np.asarray(reference).astype(np.float32)
                tolerance = (2.0 ** -7, atol)  # last place apart (onnx up to 1.18 truncated, TensorFlow rounds)
            if actual.dtype.kind in "SUO":
                actual, reference = actual.astype(str), np.asarray(reference).astype(str)
            if actual.shape != reference.shape:
                wrong[name] = f"output {index}: shape {actual.shape}, expected {reference.shape}"
            elif actual.dtype.kind in "fc" and not np.allclose(actual, reference, *tolerance, equal_nan=True):
                wrong[name] = f"output {index}: max abs difference {np.max(np.abs(actual - reference)):.3g}"
            elif actual.dtype.kind not in "fc" and not np.array_equal(actual, reference):
                wrong[name] = f"output {index}: differs"
    return wrong


# --------------------------------------------------------------------------- the data-type tables

def test_the_data_type_tables_agree_with_onnx_helpers_on_every_type_numpy_has():
    """(Storage types are onnx 1.18's, compared below where it is installed; later onnx stores float16 otherwise.)"""
    tables = data_type_tables()
    exact = [TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT8, TensorProto.UINT16, TensorProto.INT16,
             TensorProto.INT32, TensorProto.INT64, TensorProto.BOOL, TensorProto.FLOAT16, TensorProto.DOUBLE,
             TensorProto.COMPLEX64, TensorProto.COMPLEX128, TensorProto.UINT32, TensorProto.UINT64]
    for onnx_type in exact:
        dtype = helper.tensor_dtype_to_np_dtype(onnx_type)
        assert tables.TENSOR_TYPE_TO_NP_TYPE[onnx_type] == dtype
        assert tables.NP_TYPE_TO_TENSOR_TYPE[dtype] == onnx_type
        assert tables.TENSOR_TYPE_TO_STORAGE_TENSOR_TYPE[onnx_type] in tables.STORAGE_TENSOR_TYPE_TO_FIELD
    assert tables.TENSOR_TYPE_TO_NP_TYPE[TensorProto.STRING] == np.dtype(object)
    assert tables.STORAGE_TENSOR_TYPE_TO_FIELD[TensorProto.STRING] == "string_data"


def test_the_data_type_tables_are_onnx_1_18s_where_onnx_still_has_them():
    mapping = pytest.importorskip("onnx.mapping", reason="onnx >= 1.19 removed onnx.mapping; compared on the 2023 stack")
    tables = data_type_tables()
    for name in ("TENSOR_TYPE_TO_NP_TYPE", "TENSOR_TYPE_TO_STORAGE_TENSOR_TYPE", "NP_TYPE_TO_TENSOR_TYPE",
                 "STORAGE_TENSOR_TYPE_TO_FIELD"):
        assert dict(getattr(tables, name)) == dict(getattr(mapping, name)), name


@pytest.mark.tf
def test_importing_onnx_tf_leaves_no_stand_in_visible_to_the_rest_of_the_process(tmp_path):
    child = textwrap.dedent("""
        import sys, onnx, onnx.helper
        before = (hasattr(onnx, "mapping"), hasattr(onnx.helper, "mapping"), sys.modules.get("onnx.mapping"))
        from surgeon_plugins.converters.onnx_tf import compat
        from surgeon_plugins.converters.onnx_tf.compat import imported_onnx_tf
        backend = imported_onnx_tf()
        from onnx_tf.common import data_type
        from onnx_tf.handlers.backend import hardmax, bernoulli
        after = (hasattr(onnx, "mapping"), hasattr(onnx.helper, "mapping"), sys.modules.get("onnx.mapping"))
        assert before == after, (before, after)
        assert data_type.mapping.__doc__.endswith("supplied by surgeon"), data_type.mapping
        assert hardmax.tfa.seq2seq.hardmax is compat.hardmax
        assert bernoulli.tfd.Bernoulli is compat.Bernoulli
        for name in ("tensorflow_addons", "tensorflow_probability"):
            assert "surgeon" not in (getattr(sys.modules.get(name), "__doc__", "") or ""), name
        assert imported_onnx_tf() is backend
        print("ok")
    """)
    finished = subprocess.run([sys.executable, "-c", child], cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert finished.stdout.strip().endswith("ok"), finished.stderr[-3000:]


# --------------------------------------------------------------------------- backend node cases

REPLACED = ("hardmax", "gemm", "flatten", "hardsigmoid", "thresholdedrelu", "cast_")


@pytest.mark.tf
def test_every_backend_node_case_of_a_replaced_piece_serves_the_expected_outputs(tmp_path):
    """Hardmax (tensorflow_addons), Gemm and Flatten (Keras layers), HardSigmoid (Keras' hard_sigmoid),
    ThresholdedRelu, and Cast (the data-type tables), each converted and served from a fresh process."""
    cases = [case for case in backend_node_cases(REPLACED)
             if "expanded" not in case.name and in_tensorflow_types(case.model)
             and not (TENSORFLOW.startswith("2.15.") and case.name in TENSORFLOW_2_15_DIFFERS)]
    assert len(cases) >= 40, [case.name for case in cases]
    results = convert_and_serve({case.name: (case.model, case.inputs) for case in cases}, tmp_path)
    wrong = mismatches(results, {case.name: case.outputs for case in cases})
    assert not wrong, "\n".join(f"{name}: {why}" for name, why in wrong.items())


@pytest.mark.tf
def test_bernoulli_draws_zeros_and_ones_at_the_given_probability(tmp_path):
    """onnx's Bernoulli cases hold random draws no other generator repeats: compare what can be compared.

    (A static shape: onnx-tf's handler reshapes the draws to the input's static shape, and fails on a dynamic one.)
    """
    model = model_from_text("""
        <ir_version: 8, opset_import: ["" : 15]>
        g (float[3, 1000] p) => (float[3, 1000] draws, int32[3, 1000] typed) {
            draws = Bernoulli(p)
            typed = Bernoulli<dtype = 6, seed = 3.0>(p)
        }
    """)
    probabilities = np.stack([np.zeros(1000), np.ones(1000), np.full(1000, 0.3)]).astype(np.float32)
    cases = {case.name: case for case in backend_node_cases(("bernoulli",)) if "expanded" not in case.name}
    assert cases
    results = convert_and_serve({"probabilities": (model, [probabilities]),
                                 **{name: (case.model, case.inputs) for name, case in cases.items()}}, tmp_path)
    draws, typed = results["probabilities"]
    assert typed.dtype == np.int32 and draws.dtype == np.float32
    for sample in (draws, typed):
        assert set(np.unique(sample)) <= {0, 1}
        assert not sample[0].any() and sample[1].all()
        assert abs(sample[2].mean() - 0.3) < 0.05
    for name, case in cases.items():
        expected, got = case.outputs[0], results[name]
        assert not isinstance(got, str), (name, got)
        assert got[0].shape == expected.shape and got[0].dtype == expected.dtype, name
        assert set(np.unique(got[0])) <= {0, 1}, name


# --------------------------------------------------------------------------- small models against onnxruntime

SMALL_MODELS = {
    # SequenceEmpty reads the data-type tables at conversion time (its default dtype)
    "sequence_ops": """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N, 4] x) => (float[M, 4] joined, int64 length, float[K, 4] second) {
            empty = SequenceEmpty()
            one = SequenceInsert(empty, x)
            two = SequenceInsert(one, x)
            joined = ConcatFromSequence<axis = 0>(two)
            length = SequenceLength(two)
            parts = SplitToSequence<axis = 1, keepdims = 1>(x)
            column = SequenceAt(parts, length)
            second = Concat<axis = 1>(column, column, column, column)
        }
    """,
    # a Gemm without C: onnx-tf looked the empty name up as a tensor
    "gemm_without_c": """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N, 3] a, float[3, 5] b) => (float[N, 5] y) { y = Gemm<alpha = 2.0, transB = 0>(a, b, "") }
    """,
    "gemm_transposed_with_c": """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[3, N] a, float[5, 3] b, float[5] c) => (float[N, 5] y) {
            y = Gemm<alpha = 0.5, beta = 2.0, transA = 1, transB = 1>(a, b, c)
        }
    """,
}


def feed_for(model: onnx.ModelProto, batch: int, rng) -> list[np.ndarray]:
    feed = []
    for value in model.graph.input:
        dims = [dim.dim_value or batch for dim in value.type.tensor_type.shape.dim]
        feed.append(rng.standard_normal(dims).astype(np.float32))
    return feed


@pytest.mark.tf
def test_small_models_of_the_replaced_pieces_serve_what_onnxruntime_computes(tmp_path):
    rng = np.random.default_rng(1)
    models = {name: model_from_text(text) for name, text in SMALL_MODELS.items()}
    feeds = {f"{name}_batch{batch}": (model, feed_for(model, batch, rng))
             for name, model in models.items() for batch in (1, 3)}
    results = convert_and_serve(feeds, tmp_path)
    expected = {name: run_onnx(model, feed) for name, (model, feed) in feeds.items()}
    wrong = mismatches(results, expected)
    assert not wrong, wrong


# recurrent cases onnx-tf 1.10 fails on every stack (gru_fix with scope=all unrolls the GRUs into plain operators)
ONNX_TF_RECURRENT_LIMITS = {
    "test_gru_defaults": "a GRU without B: 'Must provide as many biases as the channel size'",
    "test_gru_batchwise": "a GRU without B", "test_gru_reverse": "a GRU without B",
    "test_gru_bidirectional": "a bidirectional GRU with the default activations: IndexError",
    "test_simple_rnn_bidirectional": "a bidirectional RNN with the default activations: IndexError",
}


@pytest.mark.tf
def test_the_recurrent_backend_node_cases_serve_the_expected_outputs(tmp_path):
    """onnx-tf's LSTM, GRU and RNN handlers build Keras 2's cells, which Keras 3 refuses: the layer hands them
    TensorFlow's own copy. (GRU cases with linear_before_reset=1 are gru_fix's: onnx-tf refuses those.)"""
    cases = [case for case in backend_node_cases(("lstm", "gru", "rnn", "simple_rnn"))
             if "expanded" not in case.name and case.name not in ONNX_TF_RECURRENT_LIMITS and not any(
                 attribute.name == "linear_before_reset" and attribute.i
                 for node in case.model.graph.node for attribute in node.attribute)]
    assert len(cases) >= 8, [case.name for case in cases]
    results = convert_and_serve({case.name: (case.model, case.inputs) for case in cases}, tmp_path)
    wrong = mismatches(results, {case.name: case.outputs for case in cases}, rtol=1e-3, atol=1e-4)
    assert not wrong, "\n".join(f"{name}: {why}" for name, why in wrong.items())


def test_without_onnx_tf_a_run_says_how_to_install_it(tmp_path):
    """onnx-tf is installed by a second command (with --no-deps): a user who skipped it gets that command."""
    path = tmp_path / "tiny.onnx"
    onnx.save(model_from_text("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }
    """), str(path))
    without_onnx_tf = "import sys; sys.modules['onnx_tf'] = None; from surgeon.cli import main; sys.exit(main())"
    result = subprocess.run([sys.executable, "-c", without_onnx_tf, "run", str(path), "-o", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
    assert "onnx-tf is not installed" in result.stderr
    assert "pip install --no-deps onnx-tf==1.10.0" in result.stderr
