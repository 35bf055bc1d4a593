"""The fresh-process runner: a converted model run the way a server runs it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from surgeon import SurgeonError
from surgeon.serving import run_in_fresh_process
from surgeon.testing import model_from_text, run_onnx

# Conv, then 3x3 average pooling over padding 1: counting the padding (1) converts natively;
# not counting it (0) makes onnx-tf fall back to a Python callback (a PyFunc), which only the converting process has
POOLED = """
<ir_version: 8, opset_import: ["" : 13]>
pooled (float[N, 1, 5, 5] x) => (float[N, 2, 5, 5] y, float[N, 2] s)
<float[2, 1, 3, 3] w = {0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, 0.8, -0.9, 1.0, 1.1, -1.2, 0.2, 0.1, 0.0, -0.3, 0.5, 0.9}>
{
    c = Conv <pads = [1, 1, 1, 1]> (x, w)
    y = AveragePool <kernel_shape = [3, 3], pads = [1, 1, 1, 1], count_include_pad = COUNT> (c)
    s = ReduceMean <axes = [2, 3], keepdims = 0> (y)
}
"""

# onnx-tf keeps an LSTM's weights in variables: the SavedModel must carry them
RECURRENT = """
<ir_version: 7, opset_import: ["" : 11]>
recurrent (float[3, N, 2] x) => (float[3, 1, N, 2] y)
<float[1, 8, 2] w = {0.27, -0.46, -0.92, -0.97, 0.63, 0.83, 0.21, 0.46,
                     0.09, 0.87, 0.63, -0.99, 0.71, -0.93, 0.46, -0.65},
 float[1, 8, 2] r = {0.73, 0.08, -0.40, -0.15, -0.94, -0.75, 0.34, 0.29,
                     0.23, -0.23, 0.99, 0.96, 0.37, 0.30, 0.38, -0.22},
 float[1, 16] b = {-0.73, 0.44, 0.05, -0.38, -0.03, 0.78, 0.87, -0.28,
                   0.14, -0.36, 0.19, -0.32, -0.22, 0.78, -0.55, 0.25}>
{
    y = LSTM <hidden_size = 2> (x, w, r, b)
}
"""

# two LSTM layers of the same depth and different weights: onnx-tf 1.10 gives the second the first one's cell
STACKED = RECURRENT.replace("recurrent (float[3, N, 2] x) => (float[3, 1, N, 2] y)",
                            "stacked (float[3, N, 2] x) => (float[3, 1, N, 2] y)").replace(
    "y = LSTM <hidden_size = 2> (x, w, r, b)",
    """first = LSTM <hidden_size = 2> (x, w, r, b)
    between = Squeeze <axes = [1]> (first)
    w2 = Neg(w)
    r2 = Mul(r, r)
    y = LSTM <hidden_size = 2> (between, w2, r2, b)""")

# onnx-tf's Hardmax handler takes len() of a tensor for an axis that is not the last: it needs AutoGraph
HARDMAX = """
<ir_version: 8, opset_import: ["" : 13]>
hardmax (float[N, 4, 5] x) => (float[N, 4, 5] y) { y = Hardmax <axis = 1> (x) }
"""


def convert(text: str, target):
    """The model, converted by the real onnx_tf converter plugin into ``target``."""
    from surgeon_plugins.converters.onnx_tf import OnnxTfOptions, to_saved_model

    model = model_from_text(text)
    to_saved_model(model, OnnxTfOptions(), target)
    return model


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    target = tmp_path_factory.mktemp("native") / "saved_model"
    return convert(POOLED.replace("COUNT", "1"), target), target


@pytest.fixture(scope="module")
def pyfunc(tmp_path_factory):
    target = tmp_path_factory.mktemp("pyfunc") / "saved_model"
    return convert(POOLED.replace("COUNT", "0"), target), target


def feed(batch: int, seed: int = 0, size: int = 5) -> list[np.ndarray]:
    return [np.random.default_rng(seed).standard_normal((batch, 1, size, size)).astype(np.float32)]


@pytest.mark.tf
def test_every_feed_runs_in_one_fresh_process_and_matches_onnxruntime(native):
    model, path = native
    feeds = [feed(1), feed(3, seed=1), feed(2, seed=2)]
    results = run_in_fresh_process(path, feeds, ["x"], ["y", "s"])
    assert len(results) == 3
    for got, sent in zip(results, feeds):
        for value, expected in zip(got, run_onnx(model, sent)):
            np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.tf
def test_outputs_come_back_in_the_order_asked(native):
    model, path = native
    (swapped,) = run_in_fresh_process(path, [feed(2)], ["x"], ["s", "y"])
    assert [array.shape for array in swapped] == [(2, 2), (2, 2, 5, 5)]


@pytest.mark.tf
def test_a_feed_the_signature_refuses_fails_alone(native):
    _, path = native
    good, bad, good_again = run_in_fresh_process(path, [feed(1), feed(1, size=6), feed(2)], ["x"], ["s"])
    assert isinstance(bad, str) and "Cannot feed value of shape (1, 1, 6, 6)" in bad
    assert good[0].shape == (1, 2) and good_again[0].shape == (2, 2)


@pytest.mark.tf
def test_a_pyfunc_runs_in_the_converting_process_but_in_no_fresh_one(pyfunc):
    import tensorflow as tf

    model, path = pyfunc
    x = feed(2)[0]
    here = tf.saved_model.load(str(path)).signatures["serving_default"](x=tf.constant(x))
    np.testing.assert_allclose(here["s"].numpy(), run_onnx(model, [x])[1], rtol=1e-4, atol=1e-5)
    (elsewhere,) = run_in_fresh_process(path, [[x]], ["x"], ["s"])
    assert isinstance(elsewhere, str) and "Could not find callback with key=pyfunc_" in elsewhere


@pytest.mark.tf
def test_a_recurrent_model_serves_with_its_variables(tmp_path):
    model = convert(RECURRENT, tmp_path / "saved_model")
    x = np.random.default_rng(3).standard_normal((3, 2, 2)).astype(np.float32)
    (got,) = run_in_fresh_process(tmp_path / "saved_model", [[x]], ["x"], ["y"])
    np.testing.assert_allclose(got[0], run_onnx(model, [x])[0], rtol=1e-4, atol=1e-5)


@pytest.mark.tf
def test_stacked_recurrent_layers_each_run_with_their_own_weights(tmp_path):
    model = convert(STACKED, tmp_path / "saved_model")
    x = np.random.default_rng(5).standard_normal((3, 2, 2)).astype(np.float32)
    (got,) = run_in_fresh_process(tmp_path / "saved_model", [[x]], ["x"], ["y"])
    np.testing.assert_allclose(got[0], run_onnx(model, [x])[0], rtol=1e-4, atol=1e-5)


@pytest.mark.tf
def test_a_handler_that_needs_autograph_is_traced_with_it(tmp_path, caplog):
    with caplog.at_level("DEBUG", logger="surgeon"):
        model = convert(HARDMAX, tmp_path / "saved_model")
    assert "tracing without AutoGraph failed (TypeError" in caplog.text
    x = np.random.default_rng(4).standard_normal((3, 4, 5)).astype(np.float32)
    (got,) = run_in_fresh_process(tmp_path / "saved_model", [[x]], ["x"], ["y"])
    np.testing.assert_array_equal(got[0], run_onnx(model, [x])[0])


@pytest.mark.tf
def test_names_the_signature_lacks_are_a_clear_error(native):
    _, path = native
    with pytest.raises(SurgeonError, match="the signature has no tensor 'images'"):
        run_in_fresh_process(path, [feed(1)], ["images"], ["s"])


@pytest.mark.tf
def test_a_folder_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(SurgeonError, match=f"{tmp_path} cannot be run in a fresh process: .*SavedModel"):
        run_in_fresh_process(tmp_path, [feed(1)], ["x"], ["s"])


@pytest.mark.tf
def test_a_second_recurrent_conversion_in_the_same_process_works(tmp_path):
    """onnx-tf caches its first RNN cell on the handler class; the converter must forget it (notebooks convert twice)."""
    import surgeon

    path = tmp_path / "lstm.onnx"
    onnx.save(model_from_text(RECURRENT), str(path))
    for attempt in range(2):
        report = surgeon.run(path, tmp_path / f"out{attempt}")
        assert all(row["ok"] for row in report["parity"])


@pytest.mark.tf
def test_modules_in_the_working_folder_do_not_shadow_the_servers(native, tmp_path, monkeypatch):
    """``python -m`` puts the working folder first on the module path: the child must not run there."""
    model, target = native
    (tmp_path / "numpy.py").write_text("raise SystemExit('imported the numpy.py of the working folder')\n")
    monkeypatch.chdir(tmp_path)
    x = np.ones((1, 1, 5, 5), np.float32)
    [result] = run_in_fresh_process(target, [[x]], ["x"], ["y"])
    np.testing.assert_allclose(result[0], run_onnx(model, [x])[0], rtol=1e-5, atol=1e-5)
