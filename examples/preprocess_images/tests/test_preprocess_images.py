import numpy as np
import onnx_graphsurgeon as gs

from surgeon.testing import apply_pass_with_record, assert_idempotent, find_pass, model_from_text, run_onnx

MODEL = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 3, 4, 5] pixels) => (float[N, 3] mean) { mean = ReduceMean <axes = [2, 3], keepdims = 0> (pixels) }
"""
OPTIONS = {"mean": "0.5,0.25,0.125", "std": "0.5,2,4"}


def test_the_model_takes_raw_nhwc_images_and_computes_what_it_did_on_normalized_ones():
    model = model_from_text(MODEL)
    rewritten, record = apply_pass_with_record("preprocess_images", model, **OPTIONS)
    assert record.details == {"input": "pixels", "new_input": "images", "layout": "NHWC"}
    (image,) = rewritten.graph.input
    assert image.name == "images" and image.type.tensor_type.elem_type == 2  # uint8
    raw = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3)).astype(np.uint8)
    fix = find_pass("preprocess_images")
    normalized = fix.original_inputs([raw], fix.options(mean=[0.5, 0.25, 0.125], std=[0.5, 2.0, 4.0]))
    expected = (raw.transpose(0, 3, 1, 2) / 255.0 - np.array([0.5, 0.25, 0.125]).reshape(1, 3, 1, 1)) \
        / np.array([0.5, 2, 4]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(normalized[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run_onnx(rewritten, [raw])[0], run_onnx(model, normalized)[0], rtol=1e-5, atol=1e-6)


def test_idempotent_and_detected():
    model = model_from_text(MODEL)
    fix = find_pass("preprocess_images")
    assert len(fix.detect(gs.import_onnx(model), fix.options())) == 1
    assert_idempotent("preprocess_images", model, **OPTIONS)
